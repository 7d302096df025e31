"""`dcompress shard`: turn idx files (MNIST/Fashion-MNIST) or an ImageFolder tree into shards."""
from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputDataError, UsageError
from .atomic import AtomicDir, OutputLock, check_not_input, check_target, refuse_existing
from .manifest import MANIFEST, ShardRow, build_manifest
from .schema import InputBlock, InputSource
from .safe_write import write_json
from .codecs import IMAGE_EXTS, encode_png
from .writer import env_versions, write_shards

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """Reads one idx(.gz) file (the MNIST container format) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise InputDataError(f"cannot read idx file ({e})", path=str(path)) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InputDataError("not an unsigned-byte idx file (bad magic)", path=str(path))
    ndim = data[3]
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise InputDataError(f"idx header is short: {len(data)} bytes for {ndim} dimensions", path=str(path))
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InputDataError(f"idx body has {body.size} bytes, header says {dims}", path=str(path))
    return body.reshape(dims)


def idx_samples(src: Path, split: str) -> tuple[Iterator[tuple[str, np.ndarray, int]], int, list[str]]:
    prefix = _IDX_PREFIX[split]

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                     f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"):
            if (src / name).exists():
                return src / name
        raise InputDataError(f"no {prefix}-{kind}-idx*-ubyte(.gz) file", path=str(src))

    ipath, lpath = find("images"), find("labels")
    images, labels = read_idx(ipath), read_idx(lpath)
    if images.ndim != 3 or 0 in images.shape:
        raise InputDataError(f"expected images [N, H, W] with N, H, W > 0, found {list(images.shape)}", path=str(ipath))
    if labels.ndim != 1:
        raise InputDataError(f"expected labels [N], found {list(labels.shape)}", path=str(lpath))
    if images.shape[0] != labels.shape[0]:
        raise InputDataError(f"{images.shape[0]} images but {labels.shape[0]} labels", path=str(src))
    num_classes = int(labels.max()) + 1
    names = FASHION_MNIST_CLASSES if "fashion" in str(src).lower() and num_classes == 10 else \
        [str(i) for i in range(num_classes)]

    def gen():
        for i in range(images.shape[0]):
            yield f"{split}{i:06d}", images[i][None], int(labels[i])
    return gen(), images.shape[0], names


def folder_samples(src: Path) -> tuple[Iterator[tuple[str, bytes, int, str]], int, list[str]]:
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    if not classes:
        raise InputDataError("ImageFolder needs one sub-folder per class; found none", path=str(src))
    files = []
    for c, name in enumerate(classes):
        for f in sorted((src / name).iterdir()):
            ext = f.suffix.lower().lstrip(".")
            if f.is_file() and ext in IMAGE_EXTS:
                files.append((c, f, ext))
    if not files:
        raise InputDataError("no image files in the class folders", path=str(src))

    def gen():
        for i, (c, f, ext) in enumerate(files):
            yield f"img{i:07d}", f.read_bytes(), c, ext
    return gen(), len(files), classes


def make_shards(src: str | Path, out: str | Path, *, fmt: str = "auto", split: str = "train",
                shard_size: int = 10000, overwrite: bool = False,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Writes `out/<split>-%06d.tar` + manifest.json; returns a report dict.

    `out` must not overlap `src`; an existing shard folder is replaced only with `overwrite`.
    """
    src, out = Path(src), Path(out).absolute()
    if split not in _IDX_PREFIX:
        raise UsageError(f"--split must be one of {sorted(_IDX_PREFIX)}, got {split!r}")
    if shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {shard_size}")
    if fmt not in ("auto", "idx", "folder", "imagefolder"):
        raise UsageError(f"--format must be idx, folder or auto, got {fmt!r}")
    if not src.exists():
        raise InputDataError("source does not exist", path=str(src))
    check_not_input(out, [], [src])
    with OutputLock(out):
        if check_target(out, kind="input", overwrite=overwrite) and not overwrite:
            raise refuse_existing(out)
        return _write_shards(src, out, fmt=fmt, split=split, shard_size=shard_size, progress=progress)


def _write_shards(src: Path, out: Path, *, fmt: str, split: str, shard_size: int,
                  progress: Callable[[int, int], None] | None) -> dict:
    if fmt == "auto":
        fmt = "idx" if any(src.glob("*-ubyte*")) else "folder"
    t0 = time.time()
    if fmt == "idx":
        gen, total, names = idx_samples(src, split)
        samples = ({"__key__": k, "png": encode_png(img), "cls": str(y).encode()} for k, img, y in gen)
    else:
        gen, total, names = folder_samples(src)
        samples = ({"__key__": k, ext if ext != "jpeg" else "jpg": data, "cls": str(y).encode()}
                   for k, data, y, ext in gen)

    def counted():
        for i, s in enumerate(samples):
            if progress is not None and i % 1000 == 0:
                progress(i, total)
            yield s

    with AtomicDir(out, kind="input") as tmp:
        written = write_shards(tmp, counted(), prefix=split, shard_size=shard_size)
        shards = [ShardRow.of_file(p, n) for p, n in written]
        block = InputBlock(split=split, num_samples=total, class_names=tuple(names),
                           source=InputSource(path=str(src.resolve()), format=fmt),
                           urls=f"{split}-{{000000..{len(written) - 1:06d}}}.tar", env=env_versions())
        write_json(tmp / MANIFEST, build_manifest(f"{src.name}-{split}", shards, block), indent=2)
    return {"out": str(out), "shards": len(written), "samples": total, "classes": len(names),
            "seconds": round(time.time() - t0, 2)}
