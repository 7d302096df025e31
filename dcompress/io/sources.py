"""`dcompress shard`: turn idx files (MNIST/Fashion-MNIST) or an ImageFolder tree into shards."""
from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputDataError, UsageError, unreadable
from .atomic import AtomicDir, OutputLock, check_not_input, check_target, refuse_existing
from .manifest import MANIFEST, ShardRow, build_manifest
from .schema import InputBlock, InputSource
from .safe_write import write_json
from .codecs import IMAGE_EXTS, decode_image, encode_png
from .decode import DecodeOptions, transform_image
from .labels import read_class_names
from .stream import BadSamples, bad_limit
from ..limits import MAX_PIXELS
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
            try:
                if (src / name).exists():
                    return src / name
            except OSError as e:
                raise unreadable(e, src) from None
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


def folder_samples(src: Path, class_names: list[str] | None = None
                   ) -> tuple[Iterator[tuple[str, bytes, int, str, Path]], int, list[str]]:
    """(key, file bytes, class index, extension, file) per image of an ImageFolder tree, the
    count and the class names: the sorted sub-folder names, or `class_names` (every sub-folder
    must be in it; a listed class without a folder has no images). A folder or file this process
    cannot read is an InputDataError naming it."""
    try:
        return _folder_samples(src, class_names)
    except OSError as e:
        raise unreadable(e, src) from None


def _folder_samples(src: Path, class_names: list[str] | None):
    folders = sorted(p.name for p in src.iterdir() if p.is_dir())
    if not folders:
        raise InputDataError("ImageFolder needs one sub-folder per class; found none", path=str(src))
    classes = folders if class_names is None else list(class_names)
    if class_names is not None:
        missing = [f for f in folders if f not in set(classes)]
        if missing:
            raise InputDataError(f"class folder {missing[0]!r} is not in --class-names "
                                 f"({len(missing)} folder(s) missing from the list)", path=str(src / missing[0]))
    files = []
    for c, name in enumerate(classes):
        if not (src / name).is_dir():
            continue
        for f in sorted((src / name).iterdir()):
            ext = f.suffix.lower().lstrip(".")
            if f.is_file() and ext in IMAGE_EXTS:
                files.append((c, f, ext))
    if not files:
        raise InputDataError("no image files in the class folders", path=str(src))

    def gen():
        for i, (c, f, ext) in enumerate(files):
            try:
                data = f.read_bytes()
            except OSError as e:
                raise unreadable(e, f) from None
            yield f"img{i:07d}", data, c, ext, f
    return gen(), len(files), classes


def make_shards(src: str | Path, out: str | Path, *, fmt: str = "auto", split: str = "train",
                shard_size: int = 10000, overwrite: bool = False,
                progress: Callable[[int, int], None] | None = None, size: int | None = None,
                resize_mode: str = "crop", channels: int | None = None,
                class_names: str | Path | list[str] | None = None, max_bad: int | None = None,
                max_pixels: int | None = MAX_PIXELS) -> dict:
    """Writes `out/<split>-%06d.tar` + manifest.json; returns a report dict.

    `out` must not overlap `src`; an existing shard folder is replaced only with `overwrite`.
    With `size` (and/or `channels`) every image is decoded, resized as `io.decode.transform_image`
    does and re-encoded as PNG (lossless: distilling these shards reads exactly the pixels that
    `distill --size` would make from the originals); an image that cannot be decoded is skipped
    and counted (more than `max_bad`: TooManyBadSamples). Without, ImageFolder files are copied
    byte for byte. `class_names` (a list or a class-names file) fixes the ImageFolder class order.
    """
    opts = DecodeOptions(size=size, resize_mode=resize_mode, channels=channels, max_pixels=max_pixels)
    max_bad = bad_limit(max_bad)
    if max_bad < 0:
        raise UsageError(f"--max-bad must be >= 0, got {max_bad}")
    if isinstance(class_names, (str, Path)):
        class_names = list(read_class_names(class_names, error=InputDataError))
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
        return _write_shards(src, out, fmt=fmt, split=split, shard_size=shard_size, progress=progress, opts=opts,
                             class_names=class_names, bad=BadSamples(max_bad=max_bad))


def _write_shards(src: Path, out: Path, *, fmt: str, split: str, shard_size: int,
                  progress: Callable[[int, int], None] | None, opts: DecodeOptions,
                  class_names: list[str] | None, bad: BadSamples) -> dict:
    if fmt == "auto":
        fmt = "idx" if any(src.glob("*-ubyte*")) else "folder"
    t0 = time.time()
    resize = opts.size is not None or opts.channels is not None
    if fmt == "idx":
        gen, total, names = idx_samples(src, split)
        if class_names is not None:
            if len(class_names) < len(names):
                raise InputDataError(f"--class-names lists {len(class_names)} classes, the idx labels need "
                                     f"{len(names)}", path=str(src))
            names = list(class_names)
        samples = ({"__key__": k, "png": encode_png(transform_image(img, opts)), "cls": str(y).encode()}
                   for k, img, y in gen)
    else:
        gen, total, names = folder_samples(src, class_names)
        if resize:
            samples = _resized(gen, opts, bad)
        else:
            samples = ({"__key__": k, ext if ext != "jpeg" else "jpg": data, "cls": str(y).encode()}
                       for k, data, y, ext, _ in gen)

    def counted():
        n = 0
        for n, s in enumerate(samples, 1):
            if progress is not None and (n - 1) % 1000 == 0:
                progress(n - 1, total)
            yield s
        if progress is not None:
            progress(n, total)         # the end, also under 1000 samples (a bar must not stop at 0/300)

    with AtomicDir(out, kind="input") as tmp:
        written = write_shards(tmp, counted(), prefix=split, shard_size=shard_size)
        shards = [ShardRow.of_file(p, n) for p, n in written]
        if not written or not sum(n for _, n in written):
            raise InputDataError(f"no usable images ({bad.count} could not be decoded"
                                 + (f", first: {bad.examples[0]}" if bad.examples else "") + ")", path=str(src))
        kept = sum(n for _, n in written)
        record = ({"size": opts.size, "resize_mode": opts.resize_mode if opts.size else None,
                   "channels": opts.channels, "encoding": "png", "bad_samples": bad.as_dict()} if resize else None)
        block = InputBlock(split=split, num_samples=kept, class_names=tuple(names),
                           source=InputSource(path=str(src.resolve()), format=fmt),
                           urls=f"{split}-{{000000..{len(written) - 1:06d}}}.tar", env=env_versions(), resize=record)
        write_json(tmp / MANIFEST, build_manifest(f"{src.name}-{split}", shards, block), indent=2)
    return {"out": str(out), "shards": len(written), "samples": kept, "classes": len(names),
            "seconds": round(time.time() - t0, 2), **({"resize": record} if record else {})}


def _resized(gen, opts: DecodeOptions, bad: BadSamples) -> Iterator[dict]:
    """ImageFolder samples decoded, transformed (`transform_image`) and re-encoded as PNG; files
    that cannot be decoded are counted in `bad` and skipped."""
    for key, data, y, ext, path in gen:
        try:
            arr = decode_image(data, ext, opts.max_pixels)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad sample
            bad.add(f"{path}: not a decodable image ({type(e).__name__}: {e})")
            continue
        yield {"__key__": key, "png": encode_png(transform_image(arr, opts)), "cls": str(y).encode()}
