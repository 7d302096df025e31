"""The samples of a written output as member bytes, every shard checked against the manifest
(size, md5, sample count) first, and each sample's members validated into arrays (`read_sample`).
Torch-free: `inspect` reads outputs without loading torch; the loader (io/loader.py) turns these
arrays into tensors.

Samples are grouped as webdataset's `tariterators.group_by_keys` groups them (key: the member
name up to the first dot of its basename; a new key starts a new sample; a member repeated
within a sample is an error), written here because importing webdataset imports torch (~2 s);
tests/unit/test_members.py checks both give the same samples."""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import InputDataError
from ..limits import MAX_PIXELS
from . import topk, viewlabels
from .codecs import decode_npy, parse_label
from .imageformat import decode_as, member_of
from .manifest import ShardRow, manifest_path, read_compressed, shard_paths
from .schema import CompressedBlock

_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")       # webdataset's base_plus_ext


def shard_bytes(path: str, row: ShardRow) -> bytes:
    """A shard's bytes, checked against the manifest's filesize and md5sum (one read)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputDataError("shard listed in the manifest is missing", path=path) from None
    except OSError as e:
        raise InputDataError(f"cannot read shard ({e.strerror or e})", path=path) from None
    if row.filesize is not None and len(data) != row.filesize:
        raise InputDataError(f"shard is {len(data)} bytes, the manifest says {row.filesize} (damaged or "
                             "tampered; `dcompress verify` lists every mismatch)", path=path)
    if row.md5sum is not None and hashlib.md5(data).hexdigest() != row.md5sum:
        raise InputDataError("shard md5 differs from the manifest (damaged or tampered; `dcompress verify` "
                             "lists every mismatch)", path=path)
    return data


def group_samples(members: Iterator[tuple[str, bytes]], url: str) -> Iterator[dict]:
    """(name, bytes) members in tar order -> sample dicts `{"__key__", "__url__", ext: bytes}`."""
    sample: dict | None = None
    for name, data in members:
        m = _KEY.match(name)
        if not m:
            continue
        key, ext = m.group(1), m.group(2).lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        if ext in sample:
            raise ValueError(f"{name}: duplicate file name in tar file {ext}")
        sample[ext] = data
    if sample is not None:
        yield sample


def shard_samples(data: bytes, path: str) -> Iterator[dict]:
    """The samples of one shard's bytes; InputDataError naming it when it is no readable tar."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            yield from group_samples(((m.name, tar.extractfile(m).read()) for m in tar if m.isreg()), path)
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise InputDataError(f"not a readable tar ({e})", path=path) from None


def output_samples(path: str | Path) -> tuple[Path, dict, CompressedBlock, Iterator[dict]]:
    """(manifest path, manifest, its `dcompress` block, the samples of every shard in order) of
    the output folder (or manifest.json) `path`; a shard whose sample count differs from its
    manifest row raises InputDataError once it is read."""
    mpath = manifest_path(path)
    manifest, rows, block = read_compressed(mpath)

    def samples() -> Iterator[dict]:
        for row, url in zip(rows, shard_paths(mpath, manifest)):
            n = 0
            for s in shard_samples(shard_bytes(url, row), url):
                n += 1
                yield s
            if row.nsamples is not None and n != row.nsamples:
                raise InputDataError(f"shard holds {n} samples, the manifest says {row.nsamples}", path=url)
    return mpath, manifest, block, samples()


def sample_class(s: dict, num_classes: int) -> int:
    """The sample's `.cls` as a class index; InputDataError naming shard and key when it is
    missing, malformed or outside the classes."""
    url, key = s["__url__"], s["__key__"]
    if "cls" not in s:
        raise InputDataError("sample has no .cls", path=url, key=key)
    try:
        y = parse_label(s["cls"])
    except ValueError as e:
        raise InputDataError(f".cls is {e}", path=url, key=key) from None
    if not 0 <= y < num_classes:
        raise InputDataError(f".cls {y} outside the {num_classes} classes", path=url, key=key)
    return y


@dataclass(frozen=True)
class SampleArrays:
    """One validated sample: `label` its class, `image` the float32 normalised exact tensor
    [C, H, W] (`exact`) or the uint8 pixels [C, H, W] of its image member `member`, `logits`
    float32 [C] (-inf outside the K kept classes of a top-K output)."""

    key: str
    label: int
    image: np.ndarray
    exact: bool
    logits: np.ndarray | None               # None for view labels (`views`, `online`)
    views: np.ndarray | None = None         # `views` labels: the E view records (augment.views.VIEW)
    view_logits: np.ndarray | None = None   # and their float32 logits [E, C]
    member: str = "png"                     # the image member an outside reader decodes (png, jpg, webp)


def soft_member(block: CompressedBlock) -> str | None:
    """The member holding the soft labels of an output (`.logits.npy`, `.topk.npy` for top-K,
    `.views.npy` for view labels; None for `online` labels, which ship the teacher instead)."""
    return block.labels.soft


def read_sample(s: dict, block: CompressedBlock, *, member: bool = False) -> SampleArrays:
    """The arrays of sample `s` of an output whose manifest block is `block`; InputDataError
    naming shard and key for a missing or invalid member or a non-finite value. The image is the
    exact `.npy` tensor when the sample has one, unless `member` asks for the 8-bit pixels of
    its image member (`.png`, `.jpg` or `.webp`, io/imageformat.py): what an outside reader
    decodes."""
    url, key, c = s["__url__"], s["__key__"], len(block.class_names)
    shape, k = tuple(block.image_shape), block.labels.topk
    y = sample_class(s, c)
    soft = soft_member(block)
    if soft is not None and soft not in s:
        raise InputDataError(f"sample has no .{soft}", path=url, key=key)
    image = member_of(s) or "png"
    where = image                             # the member an error names
    lg = views = view_logits = None
    try:
        if "npy" in s and not member:
            where = "npy"
            img = decode_npy(s["npy"])
            if img.shape != shape or img.dtype.kind != "f":
                raise ValueError(f"expected float {list(shape)}, found {img.dtype} {list(img.shape)}")
            img = img.astype(np.float32)
        else:
            img = decode_as(s[image], image, shape[0], MAX_PIXELS)
            if img.shape != shape:
                raise ValueError(f"expected {list(shape)}, found {list(img.shape)}")
        where = soft
        if soft == viewlabels.MEMBER:
            views, view_logits = viewlabels.unpack(decode_npy(s[soft]), c, k, block.labels.views["epochs"])
        elif soft is not None:
            lg = decode_npy(s[soft])
            if k is not None:
                lg = topk.expand(lg, c, k)               # -inf outside the top K (validated)
            elif lg.shape != (c,) or lg.dtype.kind != "f":
                raise ValueError(f"expected float [{c}], found {lg.dtype} {list(lg.shape)}")
            lg = lg.astype(np.float32)
    except KeyError:
        what = "no image member" if member else "neither .npy nor an image"
        raise InputDataError(f"sample has {what} (.png, .jpg, .webp)", path=url, key=key) from None
    except Exception as e:  # noqa: BLE001 - any decoding failure of a member names it
        raise InputDataError(f".{where} is not valid ({type(e).__name__}: {e})", path=url, key=key) from None
    # top-K logits are -inf outside the K by design (their K values were checked by expand)
    if not (np.isfinite(img).all() and (k is not None or lg is None or np.isfinite(lg).all())):
        raise InputDataError("sample holds non-finite values", path=url, key=key)
    return SampleArrays(key=key, label=y, image=img, exact=img.dtype == np.float32, logits=lg, views=views,
                        view_logits=view_logits, member=image)
