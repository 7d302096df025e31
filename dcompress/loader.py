"""Drop-in loading of a dcompress output for training jobs.

    ds = dcompress.load("out/")            # a torch Dataset
    x, soft, y = ds[0]                     # normalised image, soft label (probabilities), hard label
    ds.lr, ds.mean, ds.std, ds.classes     # learned lr (or None), normalisation, class names

Images come from the exact `.npy` tensor when present (synthetic sets), else from the PNG
re-normalised with the manifest's mean/std. The same shards also read as a plain
`webdataset.WebDataset` pipeline: see `webdataset_pipeline`.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from .errors import InputDataError
from .io.manifest import MANIFEST, read_manifest, shard_paths
from .io.codecs import decode_image, decode_npy, parse_label
from .limits import MAX_PIXELS
from .core import EvalProtocol, normalize

_BLOCK_KEYS = {"class_names": list, "normalization": dict, "labels": dict, "eval_protocol": dict,
               "image_shape": list}


def _check_block(block, mpath: Path) -> dict:
    """The `dcompress` block of a compressed-set manifest, its keys present and of the right type."""
    if not isinstance(block, dict) or block.get("kind") != "compressed":
        raise InputDataError("not a dcompress compressed-set manifest", path=str(mpath), key="dcompress.kind")
    for key, tp in _BLOCK_KEYS.items():
        if key not in block:
            raise InputDataError("missing key", path=str(mpath), key=f"dcompress.{key}")
        if not isinstance(block[key], tp):
            raise InputDataError(f"must be a {tp.__name__}, found {type(block[key]).__name__}", path=str(mpath),
                                 key=f"dcompress.{key}")
    names = block["class_names"]
    if not names or not all(isinstance(n, str) for n in names):
        raise InputDataError("must be a non-empty list of strings", path=str(mpath), key="dcompress.class_names")
    norm = block["normalization"]
    if not isinstance(norm.get("mean"), list) or not isinstance(norm.get("std"), list) \
            or len(norm["mean"]) != len(norm["std"]) or len(norm["mean"]) != (block["image_shape"] or [0])[0]:
        raise InputDataError(f"mean and std must each have one value per image channel (image_shape "
                             f"{block['image_shape']})", path=str(mpath), key="dcompress.normalization")
    for k in ("mean", "std"):
        v = norm.get(k)
        if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) for x in v) \
                or (k == "std" and not all(x > 0 for x in v)):
            raise InputDataError("must be a list of numbers (std > 0)", path=str(mpath), key=f"dcompress.normalization.{k}")
    shape = block["image_shape"]
    if len(shape) != 3 or not all(isinstance(x, int) and x > 0 for x in shape) or shape[0] != len(norm["mean"]):
        raise InputDataError(f"must be [C, H, W] matching the normalisation, found {shape!r}", path=str(mpath),
                             key="dcompress.image_shape")
    if not isinstance(block["labels"].get("kind"), str):
        raise InputDataError("missing", path=str(mpath), key="dcompress.labels.kind")
    _check_protocol(block["eval_protocol"], mpath)
    learned = block.get("learned") or {}
    if not isinstance(learned, dict) or not (learned.get("lr") is None or isinstance(learned["lr"], (int, float))):
        raise InputDataError("must be an object with a numeric lr", path=str(mpath), key="dcompress.learned")
    return block


def _check_protocol(proto: dict, mpath: Path) -> None:
    """Every field of the stored evaluation protocol known and of its declared type."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(EvalProtocol)
    fields = {f.name for f in dataclasses.fields(EvalProtocol)}
    for k, v in proto.items():
        key = f"dcompress.eval_protocol.{k}"
        if k not in fields:
            raise InputDataError("unknown evaluation protocol field", path=str(mpath), key=key)
        allowed = typing.get_args(hints[k]) or (hints[k],)
        ok = any(v is None if a is type(None) else
                 (isinstance(v, (int, float)) and not isinstance(v, bool)) if a is float else
                 (isinstance(v, int) and not isinstance(v, bool)) if a is int else isinstance(v, a)
                 for a in allowed)
        if not ok:
            raise InputDataError(f"must be {' or '.join(getattr(a, '__name__', str(a)) for a in allowed)}, "
                                 f"found {v!r}", path=str(mpath), key=key)


def _shard_bytes(path: str, row: dict, mpath: Path) -> bytes:
    """A shard's bytes, checked against the manifest's filesize and md5sum (one read)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputDataError("shard listed in the manifest is missing", path=path) from None
    except OSError as e:
        raise InputDataError(f"cannot read shard ({e.strerror or e})", path=path) from None
    if "filesize" in row and len(data) != row["filesize"]:
        raise InputDataError(f"shard is {len(data)} bytes, the manifest says {row['filesize']} (damaged or "
                             "tampered; `dcompress verify` lists every mismatch)", path=path)
    if "md5sum" in row and hashlib.md5(data).hexdigest() != row["md5sum"]:
        raise InputDataError("shard md5 differs from the manifest (damaged or tampered; `dcompress verify` "
                             "lists every mismatch)", path=path)
    return data


def _samples(data: bytes, path: str):
    try:
        stream = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        files = ({"fname": m.name, "data": stream.extractfile(m).read(), "__url__": path} for m in stream if m.isreg())
        for s in wds.tariterators.group_by_keys(files):
            yield s
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise InputDataError(f"not a readable tar ({e})", path=path) from None


class CompressedDataset(torch.utils.data.Dataset):
    """All samples of one output, decoded into memory (compressed sets are small).

    Every shard is checked against the manifest (size, md5, sample count) and every sample
    member is validated; a damaged or tampered output raises InputDataError naming the shard
    and key.

    Attributes:
        images: float32 [M, C, H, W] normalised. labels: int64 [M]. logits: float32 [M, C].
        soft_labels: softmax(logits / temperature) [M, C].
        lr / lrs: learned learning rate(s) or None. mean/std: normalisation. classes: names.
        manifest: the parsed manifest.json. manifest_path: its path. protocol: the method's EvalProtocol.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        mpath = path / MANIFEST if path.is_dir() else path
        self.manifest_path = mpath
        self.manifest = read_manifest(mpath)
        block = _check_block(self.manifest.get("dcompress"), mpath)
        self.classes: list[str] = block["class_names"]
        self.mean = tuple(float(v) for v in block["normalization"]["mean"])
        self.std = tuple(float(v) for v in block["normalization"]["std"])
        self.lr: float | None = (block.get("learned") or {}).get("lr")
        self.lrs: list[float] | None = (block.get("learned") or {}).get("lrs")
        self.temperature = float(block["labels"].get("temperature", 1.0))
        self.label_kind: str = block["labels"]["kind"]
        self.protocol = EvalProtocol(**block["eval_protocol"])
        shape = tuple(block["image_shape"])
        images, labels, logits, self.keys, self.meta = [], [], [], [], []
        for row, url in zip(self.manifest["shardlist"], shard_paths(mpath, self.manifest)):
            n = 0
            for s in _samples(_shard_bytes(url, row, mpath), url):
                img, y, lg = self._sample(s, url, shape)
                images.append(img)
                labels.append(y)
                logits.append(lg)
                self.keys.append(s["__key__"])
                n += 1
            if "nsamples" in row and n != row["nsamples"]:
                raise InputDataError(f"shard holds {n} samples, the manifest says {row['nsamples']}", path=url)
        if not images:
            raise InputDataError("output has no samples", path=str(mpath))
        self.images = torch.stack(images)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.logits = torch.stack(logits)
        self.soft_labels = torch.softmax(self.logits / self.temperature, dim=1)

    def _sample(self, s: dict, url: str, shape: tuple) -> tuple[torch.Tensor, int, torch.Tensor]:
        key, c = s["__key__"], len(self.classes)
        for member in ("cls", "logits.npy"):
            if member not in s:
                raise InputDataError(f"sample has no .{member}", path=url, key=key)
        try:
            y = parse_label(s["cls"])
        except ValueError as e:
            raise InputDataError(f".cls is {e}", path=url, key=key) from None
        if not 0 <= y < c:
            raise InputDataError(f".cls {y} outside the {c} classes", path=url, key=key)
        try:
            if "npy" in s:
                arr = decode_npy(s["npy"])
                if arr.shape != shape or arr.dtype.kind != "f":
                    raise ValueError(f"expected float {list(shape)}, found {arr.dtype} {list(arr.shape)}")
                img = torch.from_numpy(arr.astype(np.float32))
                member = "npy"
            else:
                member = "png"
                u8 = decode_image(s["png"], "png", MAX_PIXELS)
                if u8.shape != shape:
                    raise ValueError(f"expected {list(shape)}, found {list(u8.shape)}")
                img = normalize(torch.from_numpy(u8).unsqueeze(0), self.mean, self.std)[0]
            member = "logits.npy"
            lg = decode_npy(s["logits.npy"])
            if lg.shape != (c,) or lg.dtype.kind != "f":
                raise ValueError(f"expected float [{c}], found {lg.dtype} {list(lg.shape)}")
        except KeyError:
            raise InputDataError("sample has neither .npy nor .png", path=url, key=key) from None
        except Exception as e:  # noqa: BLE001 - any decoding failure of a member names it
            raise InputDataError(f".{member} is not valid ({type(e).__name__}: {e})", path=url, key=key) from None
        lg = torch.from_numpy(lg.astype(np.float32))
        if not (torch.isfinite(img).all() and torch.isfinite(lg).all()):
            raise InputDataError("sample holds non-finite values", path=url, key=key)
        return img, y, lg

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int):
        return self.images[i], self.soft_labels[i], self.labels[i]


def load(path: str | Path) -> CompressedDataset:
    """Loads a dcompress output folder (or its manifest.json) as a torch Dataset."""
    return CompressedDataset(path)


def webdataset_pipeline(path: str | Path) -> wds.WebDataset:
    """The output as a `webdataset.WebDataset` yielding (uint8 HWC image array, class, logits)."""
    path = Path(path)
    mpath = path / MANIFEST if path.is_dir() else path
    urls = shard_paths(mpath, read_manifest(mpath))
    return wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "cls", "logits.npy")
