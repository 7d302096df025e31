"""Reading WebDataset shards into RealData, and writing sample dicts into shards.

Tar parsing is webdataset's (`tarfile_to_samples`); decoding and PNG encoding are Pillow's. Nothing is ever unpickled: only image bytes,
ASCII `.cls` and (in our outputs) `.npy` via `np.load(allow_pickle=False)`.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import tarfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand

from ..errors import InputDataError, TooManyBadSamples, UsageError
from ..types import RealData
from .manifest import MANIFEST, read_manifest, shard_paths

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "ppm", "pgm", "pbm", "bmp", "tif", "tiff")


REMOTE = ("pipe:", "http:", "https:", "s3:", "gs:")
# user-typed remote urls -> (client program, shell command reading the object to stdout). curl gets
# short timeouts: webdataset's own (30 retries x 30 s connect timeout) hides an unreachable host
# for many minutes.
_CLIENTS = {
    "http": ("curl", "curl -f -sS -L --connect-timeout 15 --retry 2 --retry-delay 1 {url}"),
    "https": ("curl", "curl -f -sS -L --connect-timeout 15 --retry 2 --retry-delay 1 {url}"),
    "s3": ("aws", "aws s3 cp --quiet {url} -"),
    "gs": ("gsutil", "gsutil -q cat {url}"),
}
MAX_LABEL = 1_000_000       # labels at or above this are an input error (a class list that size is a bug)
MAX_PIXELS = 64_000_000     # default --max-pixels: decompression-bomb guard, checked from the header
MAX_SHARDS = 1_000_000      # a brace pattern expanding past this is a typo, not a dataset


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE)


def opener_url(url: str) -> str:
    """What webdataset opens for a user-typed url: local paths and `pipe:` as they are; http(s),
    s3 and gs objects through their command-line client (UsageError naming the missing client)."""
    import shlex
    import shutil

    scheme = url.split(":", 1)[0]
    if scheme not in _CLIENTS:
        return url
    client, command = _CLIENTS[scheme]
    if shutil.which(client) is None:
        raise UsageError(f"{scheme}:// urls are read with `{client}`, which is not on PATH; install it, or read "
                         f"the shard with your own command as a pipe: url", path=url)
    return "pipe:" + command.format(url=shlex.quote(url))


@dataclass
class ResolvedInput:
    """Shard URLs plus the input manifest when one was found.

    `folders` are the folders given as input (shard folders, manifest folders): an output
    must never overlap them nor its local shard files (`io.atomic.check_not_input`).
    """

    urls: list[str]
    manifest: dict | None = None
    description: str = ""
    folders: list[Path] = field(default_factory=list)


def _pattern_size(item: str) -> int:
    """How many urls a brace pattern names, counted without expanding it (numeric ranges and
    comma lists; a conservative product over the groups)."""
    size = 1
    for group in re.findall(r"\{([^{}]*)\}", item):
        m = re.fullmatch(r"\s*(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\s*", group)
        if m:
            step = abs(int(m.group(3) or 1)) or 1
            size *= abs(int(m.group(2)) - int(m.group(1))) // step + 1
        else:
            size *= group.count(",") + 1
    return size


def _check_shard_file(url: str, source: str | None = None) -> None:
    """InputDataError unless `url` is a non-empty regular file (named in `source`'s terms)."""
    p = Path(url)
    where = f" (listed in {source})" if source else ""
    if not p.exists():
        raise InputDataError(f"shard not found{where}", path=url)
    if not p.is_file():
        raise InputDataError(f"expected a shard file, found a {'folder' if p.is_dir() else 'special file'}{where}",
                             path=url)
    if p.stat().st_size == 0:
        raise InputDataError(f"shard is an empty file{where}", path=url)


def _expand(item: str) -> list[str]:
    """Brace pattern or quoted glob -> list of urls (the user's own words: pipe: is theirs)."""
    from braceexpand import UnbalancedBracesError

    if "{}" in item:
        raise UsageError(f"empty brace group '{{}}' in URL {item!r}")
    if _pattern_size(item) > MAX_SHARDS:
        raise UsageError(f"URL pattern {item!r} expands to more than {MAX_SHARDS} shards")
    try:
        urls = list(itertools.islice(braceexpand(item), MAX_SHARDS + 1))
    except UnbalancedBracesError:
        raise UsageError(f"unbalanced braces in URL {item!r}") from None
    if len(urls) > MAX_SHARDS:
        raise UsageError(f"URL pattern {item!r} expands to more than {MAX_SHARDS} shards")
    if is_remote(item) or not any(ch in item for ch in "*?["):
        return urls
    found = [u for pattern in urls for u in sorted(glob.glob(pattern))]
    if not found:
        raise InputDataError("no file matches this glob pattern", path=item)
    return found


def resolve_urls(spec: str | Iterable[str], *, allow_manifest_urls: bool = False) -> ResolvedInput:
    """Turns the CLI's URLS argument into a list of shard URLs.

    Accepts: a folder written by `dcompress shard`/`distill` (its manifest.json, else its
    *.tar files), a manifest.json path, brace patterns (`d/train-{000000..000005}.tar`), quoted
    globs (`'d/train-*.tar'`), several of those, and `pipe:`/`http(s):` URLs typed by the user
    (passed to webdataset). Rows of a manifest must be files inside its folder unless
    `allow_manifest_urls` (a manifest is data and never runs a command).
    """
    items = [str(spec)] if isinstance(spec, (str, os.PathLike)) else [str(s) for s in spec]
    if not items or not all(items):
        raise UsageError("no input URLs given" if not items else "empty input URL")
    urls: list[str] = []
    folders: list[Path] = []
    manifest = None
    for item in items:
        p = Path(item)
        if not is_remote(item) and (p.is_dir() or p.suffix == ".json"):
            mpath = p / MANIFEST if p.is_dir() else p
            if mpath.exists() and not mpath.is_file():
                raise InputDataError("manifest.json is not a file", path=str(mpath))
            if mpath.is_file():
                manifest = read_manifest(mpath)
                rows = shard_paths(mpath, manifest, trust_urls=allow_manifest_urls)
                for url in rows:
                    if not is_remote(url):
                        _check_shard_file(url, str(mpath))
                urls += rows
                folders.append(mpath.parent.absolute())
                continue
            if p.is_dir():
                tars = sorted(str(t) for ext in ("tar", "tar.gz", "tgz") for t in p.glob(f"*.{ext}"))
                if not tars:
                    raise InputDataError("folder has neither manifest.json nor *.tar shards (for an image "
                                         "folder, run `dcompress shard` first)", path=item)
                urls += tars
                folders.append(p.absolute())
                continue
            raise InputDataError("manifest file not found", path=item)
        for url in _expand(item):
            if not is_remote(url):
                _check_shard_file(url)
            urls.append(url)
    if manifest is None:
        manifest = _sibling_manifest(urls)
    return ResolvedInput(urls=urls, manifest=manifest, description=" ".join(items), folders=folders)


def recorded_urls(urls, *, manifest: str | Path) -> list[str]:
    """Shard urls recorded in a manifest (`dcompress.source.urls`), checked as data: local files
    only, never a command or a network fetch."""
    key = "dcompress.source.urls"
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
        raise InputDataError("must be a non-empty list of shard paths", path=str(manifest), key=key)
    for u in urls:
        if ":" in u.split("/", 1)[0] or ".." in Path(u).parts:
            raise InputDataError(f"refusing recorded url {u!r}: only local shard files are re-read from a "
                                 "manifest; pass --train URLS", path=str(manifest), key=key)
        if not Path(u).is_file():
            raise InputDataError(f"recorded training shard {u} is gone; pass --train URLS or --no-random",
                                 path=str(manifest), key=key)
    return urls


def _sibling_manifest(urls: list[str]) -> dict | None:
    """The manifest.json beside local shards, when every shard is listed in it (class names)."""
    local = [Path(u) for u in urls if not is_remote(u)]
    if not local or len({p.parent for p in local}) != 1:
        return None
    mpath = local[0].parent / MANIFEST
    if not mpath.exists():
        return None
    try:
        manifest = read_manifest(mpath)
    except InputDataError:
        return None
    listed = {row["url"] for row in manifest["shardlist"]}
    return manifest if all(p.name in listed for p in local) else None


@dataclass
class BadSamples:
    """Counts and examples of skipped input samples (reported in --json and the manifest)."""

    max_bad: int
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < 20:
            self.examples.append(message)
        if self.count > self.max_bad:
            raise TooManyBadSamples(
                f"{self.count} bad samples exceed --max-bad {self.max_bad}; last: {message}")

    def as_dict(self) -> dict:
        return {"count": self.count, "examples": self.examples}


class ImageTooLarge(ValueError):
    """The header declares more pixels than --max-pixels (checked before decoding)."""


def decode_image(data: bytes, ext: str, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Image bytes -> uint8 array [C, H, W] (C = 1 or 3; alpha and palettes resolved).

    Pillow decodes every format here (torchvision 0.29 deprecates its own image codecs). The
    size is read from the header first: more than `max_pixels` pixels raises ImageTooLarge
    before any pixel is decoded (decompression bombs).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our own limit decides below
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:                              # beyond Pillow's hard limit
        raise ImageTooLarge(f"{e} (--max-pixels {max_pixels})") from None
    with im:
        w, h = im.size
        if w < 1 or h < 1:
            raise ValueError(f"image has no pixels ({w}x{h})")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels, above --max-pixels {max_pixels}")
        im.load()
        if im.mode not in ("L", "RGB"):
            im = im.convert("L" if im.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
        arr = np.asarray(im)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.array(arr, dtype=np.uint8, order="C")  # a writable copy


def _sample_image(sample: dict) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    return None


_LABEL = re.compile(rb"^\s*[+-]?[0-9]+\s*$")


_CURL_STATUS = {6: "could not resolve host", 7: "could not connect", 22: "HTTP error (status >= 400)",
                28: "timed out", 35: "TLS handshake failed", 56: "connection reset"}


def describe_stream_error(exn: Exception) -> str:
    """The reader's exception, with the exit status of a `pipe:` command (or of curl for http
    urls) instead of an object repr: `pipe:aws s3 cp ...` exited with status 1."""
    from webdataset.gopen import Pipe

    pipe = next((a for a in getattr(exn, "args", ()) if isinstance(a, Pipe)), None)
    if pipe is None:
        return str(exn)
    try:
        status = pipe.proc.wait(timeout=10)
    except Exception:  # noqa: BLE001 - still running or gone: report what we know
        status = None
    cmd = pipe.args[0][0] if pipe.args and pipe.args[0] else "?"
    cmd = " ".join(cmd) if isinstance(cmd, (list, tuple)) else str(cmd)
    what = str(exn.args[0]) if exn.args and isinstance(exn.args[0], str) else type(exn).__name__
    if status in (None, 0):
        return f"{what} from command `{cmd}`"
    meaning = f" ({_CURL_STATUS[status]})" if cmd.startswith("curl") and status in _CURL_STATUS else ""
    return f"command `{cmd}` exited with status {status}{meaning}"


def parse_label(raw) -> int:
    """An ASCII integer label (`.cls`) -> int; ValueError when it is not one or overflows int64."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if not isinstance(raw, bytes) or not _LABEL.match(raw):
        raise ValueError("not an integer")
    value = int(raw)
    if not -(2 ** 63) <= value < 2 ** 63:
        raise ValueError("outside the int64 range")
    return value


def _shard_samples(urls: list[str], bad: BadSamples):
    """Samples of every shard, one shard at a time so that each problem names its shard.

    A shard that cannot be opened at all (a `pipe:` command or curl failing) is unusable input
    (InputDataError, like a missing file); unreadable data inside a shard and member names that
    are not `key.ext` relative paths are counted bad samples; a member twice in one sample is a
    duplicate key (InputDataError).
    """
    for url in urls:
        def handler(exn: Exception, url=url) -> bool:
            if describe_stream_error(exn).startswith("command"):
                raise InputDataError(f"cannot read shard: {describe_stream_error(exn)}", path=url) from None
            if "duplicate file name" in str(exn):
                raise InputDataError(f"a member appears twice in one sample ({str(exn).split(':')[0]})",
                                     path=url) from None
            bad.add(f"{url}: unreadable shard data: {describe_stream_error(exn)}")
            return True

        def select(name: str, url=url) -> bool:
            base = name.rsplit("/", 1)[-1]
            if name.startswith("/") or ".." in name.split("/") or "." not in base or base.startswith("."):
                bad.add(f"{url}: member {name!r} is not a relative 'key.ext' name (skipped)")
                return False
            return True

        pipeline = wds.DataPipeline(wds.SimpleShardList([opener_url(url)]),
                                    wds.tarfile_to_samples(handler=handler, select_files=select))
        for sample in pipeline:
            sample["__url__"] = url
            yield sample


def read_real(inp: ResolvedInput, *, label_key: str = "cls", max_bad: int = 100,
              max_pixels: int | None = MAX_PIXELS, progress: Callable[[int], None] | None = None) -> RealData:
    """Streams every shard once and decodes it into an in-memory RealData.

    Per-sample problems (undecodable or oversized image, no image member, missing,
    non-integer or int64-overflowing label, unreadable/truncated tar) are skipped and counted;
    more than `max_bad` raises TooManyBadSamples (exit 3). Dataset-level problems (no samples,
    mixed image shapes, duplicate keys, negative labels or labels >= MAX_LABEL, labels outside
    the class list) raise InputDataError (exit 4), the label bound at the first offending sample.
    """
    bad = BadSamples(max_bad=max_bad)
    images: list[np.ndarray] = []
    labels: list[int] = []
    keys: list[str] = []
    seen: dict[str, str] = {}
    shape = None
    for sample in _shard_samples(inp.urls, bad):
        key, url = sample["__key__"], sample["__url__"]
        if key in seen:
            raise InputDataError(f"duplicate key (also in {seen[key]})", path=url, key=key)
        seen[key] = url
        found = _sample_image(sample)
        if found is None:
            members = sorted(k for k in sample if not k.startswith("__"))
            bad.add(f"{url}: key {key!r}: no image member (has: {', '.join(members)})")
            continue
        ext, data = found
        try:
            arr = decode_image(data, ext, max_pixels)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad sample
            bad.add(f"{url}: key {key!r}: .{ext} is not a decodable image ({type(e).__name__}: {e})")
            continue
        raw = sample.get(label_key)
        if raw is None:
            bad.add(f"{url}: key {key!r}: missing .{label_key} label")
            continue
        try:
            label = parse_label(raw)
        except ValueError as e:
            bad.add(f"{url}: key {key!r}: .{label_key} is {e} ({raw[:24]!r})")
            continue
        if not 0 <= label < MAX_LABEL:
            raise InputDataError(f".{label_key} label {label} is {'negative' if label < 0 else 'implausibly large'}"
                                 f" (labels must be class indices in [0, {MAX_LABEL}))", path=url, key=key)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            what = "channels" if arr.shape[0] != shape[0] else "image size"
            raise InputDataError(
                f"mixed {what}: {arr.shape[0]}x{arr.shape[1]}x{arr.shape[2]} (CxHxW), "
                f"expected {shape[0]}x{shape[1]}x{shape[2]} like the first sample", path=url, key=key)
        images.append(arr)
        labels.append(label)
        keys.append(key)
        if progress is not None:
            progress(1)
    for url in inp.urls:
        problem = tar_truncation(url)
        if problem:
            bad.add(f"{url}: {problem}")
    if not images:
        raise InputDataError(f"no usable samples in {len(inp.urls)} shard(s) ({inp.description})"
                             + (f"; {bad.count} bad, first: {bad.examples[0]}" if bad.count else ""))
    label_t = torch.tensor(labels, dtype=torch.int64)
    class_names = _class_names(inp, label_t, keys)
    x = torch.from_numpy(np.stack(images))
    mean, std = channel_stats(x)
    fingerprint = fingerprint_of(keys, label_t, x)
    source = {"urls": [u if is_remote(u) else str(Path(u).resolve()) for u in inp.urls],
              "num_samples": len(keys), "fingerprint": fingerprint, "bad_samples": bad.as_dict(),
              "class_counts": torch.bincount(label_t, minlength=len(class_names)).tolist()}
    return RealData(images=x, labels=label_t, keys=keys, class_names=class_names,
                    mean=mean, std=std, source=source)


def _class_names(inp: ResolvedInput, labels: torch.Tensor, keys: list[str]) -> list[str]:
    names = None
    if inp.manifest is not None:
        names = inp.manifest.get("dcompress", {}).get("class_names")
    if labels.min() < 0:
        i = int(torch.argmin(labels))
        raise InputDataError(f"negative label {int(labels[i])}", key=keys[i])
    if names is None:
        n = int(labels.max()) + 1
        if n > labels.numel():
            i = int(torch.argmax(labels))
            raise InputDataError(f"labels imply {n} classes but there are only {labels.numel()} samples; "
                                 "labels must be class indices 0..C-1 (or give an input manifest with "
                                 "class_names)", key=keys[i])
        return [str(i) for i in range(n)]
    bad = (labels >= len(names)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise InputDataError(f"label {int(labels[i])} outside the class list of {len(names)} classes "
                             f"in the input manifest", key=keys[i])
    return list(names)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 images [N, C, H, W], in [0, 1] units (float64 sums)."""
    xf = x.double().div_(255.0).transpose(0, 1).reshape(x.shape[1], -1)
    return tuple(round(float(v), 6) for v in xf.mean(1)), tuple(round(float(v), 6) for v in xf.std(1))


def fingerprint_of(keys: list[str], labels: torch.Tensor, images: torch.Tensor) -> str:
    """sha256 over keys, labels and pixels: identifies the decoded content, not the bytes."""
    h = hashlib.sha256()
    h.update("\n".join(keys).encode())
    h.update(labels.numpy().tobytes())
    h.update(images.numpy().tobytes())
    return "sha256:" + h.hexdigest()


def tar_truncation(url: str) -> str | None:
    """Why a local tar shard is truncated, or None when it is complete (or not local).

    Stream readers stop silently when a tar is cut at a member boundary; a complete tar ends
    with two zero blocks after its last member, which is what this checks. Gzip-compressed
    tars (`.tar.gz`) are checked on their decompressed stream.
    """
    if is_remote(url):
        return None
    with open(url, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = (lambda: gzip.open(url, "rb")) if gz else (lambda: open(url, "rb"))
    try:
        with opener() as f, tarfile.open(fileobj=f, mode="r:") as tf:
            end = 0
            for m in tf:
                end = m.offset_data + 512 * ((m.size + 511) // 512)
        with opener() as f:
            f.seek(end)
            tail = f.read(1024)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        return f"unreadable {'gzip ' if gz else ''}tar ({e})"
    if len(tail) < 1024:
        return f"truncated tar: data runs to byte {end} and the end-of-archive marker is missing"
    if tail != bytes(1024):
        return f"truncated tar: no end-of-archive marker after byte {end}"
    return None


# ---------------------------------------------------------------------------------------- writing

def encode_png(img_u8: np.ndarray) -> bytes:
    """uint8 [C, H, W] -> PNG bytes (deterministic, lossless; 1 channel stays grayscale)."""
    from PIL import Image

    arr = img_u8[0] if img_u8.shape[0] == 1 else img_u8.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def write_shards(out_dir: Path, samples: Iterable[dict], *, prefix: str, shard_size: int) -> list[tuple[Path, int]]:
    """Writes sample dicts (`__key__` + ext -> bytes) into `prefix-%06d.tar` shards.

    Tar members get mtime 0 and fixed owner/mode, so equal samples give byte-identical shards.
    Returns [(path, nsamples)] in order.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    written: list[tuple[Path, int]] = []
    writer, path, count = None, None, 0
    for sample in samples:
        if writer is None or count >= shard_size:
            if writer is not None:
                writer.close()
                written.append((path, count))
            path = out_dir / f"{prefix}-{len(written):06d}.tar"
            writer = wds.TarWriter(str(path), encoder=False, mtime=0, user="dcompress", group="dcompress")
            count = 0
        writer.write(sample)
        count += 1
    if writer is not None:
        writer.close()
        written.append((path, count))
    return written


def json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def env_versions() -> dict:
    import platform

    import torchvision

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": np.__version__, "webdataset": _version("webdataset")}
    try:
        import faiss

        out["faiss"] = getattr(faiss, "__version__", "?")
    except ImportError:
        pass
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"
