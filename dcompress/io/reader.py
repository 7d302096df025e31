"""Reading WebDataset shards into RealData (webdataset walks the tars; `io.codecs` decodes).

Nothing is ever unpickled: only image bytes, ASCII `.cls` and `.npy` via `np.load(allow_pickle=False)`.
"""
from __future__ import annotations

import gzip
import hashlib
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import webdataset as wds

from ..errors import InputDataError, TooManyBadSamples
from ..limits import MAX_LABEL, MAX_PIXELS
from ..core import RealData, TensorStore
from .codecs import IMAGE_EXTS, decode_image, parse_label
from .urls import ResolvedInput, is_remote, opener_url


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


def _sample_image(sample: dict) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    return None


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
    images = _Rows(capacity=_expected_samples(inp))
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
    x = torch.from_numpy(images.array())
    mean, std = channel_stats(x)
    fingerprint = fingerprint_of(keys, label_t, x)
    source = {"urls": [u if is_remote(u) else str(Path(u).resolve()) for u in inp.urls],
              "num_samples": len(keys), "fingerprint": fingerprint, "bad_samples": bad.as_dict(),
              "class_counts": torch.bincount(label_t, minlength=len(class_names)).tolist()}
    return RealData(store=TensorStore(x), labels=label_t, keys=keys, class_names=class_names,
                    mean=mean, std=std, source=source)


class _Rows:
    """Decoded images appended into one growing uint8 array (no list of arrays then a stacked
    copy: with the input manifest's sample count the data is held once)."""

    def __init__(self, capacity: int):
        self.capacity, self.n, self.buf = max(capacity, 1), 0, None

    def append(self, arr: np.ndarray) -> None:
        if self.buf is None:
            self.buf = np.empty((self.capacity, *arr.shape), dtype=np.uint8)
        elif self.n == self.buf.shape[0]:
            grown = np.empty((2 * self.n, *self.buf.shape[1:]), dtype=np.uint8)
            grown[:self.n] = self.buf
            self.buf = grown
        self.buf[self.n] = arr
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def array(self) -> np.ndarray:
        return self.buf[:self.n]


def _expected_samples(inp: ResolvedInput) -> int:
    """Samples the input's manifest announces for these shards (a capacity hint), else 1024."""
    rows = (inp.manifest or {}).get("shardlist", [])
    names = {Path(u).name for u in inp.urls}
    return sum(r.get("nsamples", 0) for r in rows if Path(r["url"]).name in names) or 1024


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


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std (unbiased) of uint8 images [N, C, H, W], in [0, 1] units: two passes
    over chunks of `chunk` images with float64 sums, so no float copy of the whole set is made."""
    n, c = x.shape[0], x.shape[1]
    count = n * x.shape[2] * x.shape[3]
    total = torch.zeros(c, dtype=torch.float64)
    for s in range(0, n, chunk):
        total += x[s:s + chunk].double().sum((0, 2, 3))
    mean = total / 255.0 / count
    sq = torch.zeros(c, dtype=torch.float64)
    for s in range(0, n, chunk):
        d = x[s:s + chunk].double().div_(255.0) - mean.view(1, c, 1, 1)
        sq += (d * d).sum((0, 2, 3))
    std = (sq / max(count - 1, 1)).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def fingerprint_of(keys: list[str], labels: torch.Tensor, images: torch.Tensor) -> str:
    """sha256 over keys, labels and pixels: identifies the decoded content, not the bytes."""
    h = hashlib.sha256()
    h.update("\n".join(keys).encode())
    h.update(labels.numpy().tobytes())
    flat = images.contiguous().numpy()
    for start in range(0, flat.shape[0], 4096):            # the pixel bytes, hashed without a copy
        h.update(flat[start:start + 4096])
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
