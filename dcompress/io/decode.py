"""One shard's samples -> decoded images and raw labels: the unit of work of a decode worker.

`decode_sample` turns one WebDataset sample (a dict of member bytes) into a uint8 [C, H, W]
image and its raw label (an int, or a string to be mapped to a class index later); the
options that change the decoded bytes (`DecodeOptions`) are part of the decoded store's key.
Nothing here unpickles: image bytes go to the image decoder, labels are parsed as text.
"""
from __future__ import annotations

import gzip
import tarfile
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputDataError, TooManyBadSamples
from ..limits import MAX_LABEL, MAX_PIXELS
from .codecs import IMAGE_EXTS, decode_image, parse_label
from .urls import is_remote, opener_url


@dataclass(frozen=True)
class DecodeOptions:
    """What decides the decoded bytes of an input (recorded in the store's key and the manifest).

    label_key: the member holding the label (`cls`).
    max_pixels: images declaring more pixels are bad samples.
    """

    label_key: str = "cls"
    max_pixels: int | None = MAX_PIXELS

    def to_dict(self) -> dict:
        return asdict(self)


class BadSample(ValueError):
    """A sample to skip and count (undecodable image, missing or malformed label)."""


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

    def merge(self, count: int, examples: list[str]) -> None:
        """Adds another worker's tally (examples kept up to 20, the bound checked once)."""
        if count == 0:
            return
        self.count += count
        self.examples.extend(examples[:max(0, 20 - len(self.examples))])
        if self.count > self.max_bad:
            raise TooManyBadSamples(
                f"{self.count} bad samples exceed --max-bad {self.max_bad}; last: {examples[-1]}")

    def as_dict(self) -> dict:
        return {"count": self.count, "examples": self.examples}


def sample_image(sample: dict) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    return None


def sample_label(sample: dict, key: str) -> int | str:
    """The raw label of `sample` under `key` (BadSample when missing or malformed)."""
    raw = sample.get(key)
    if raw is None:
        raise BadSample(f"missing .{key} label")
    try:
        return parse_label(raw)
    except ValueError as e:
        raise BadSample(f".{key} is {e} ({raw[:24]!r})") from None


def decode_sample(sample: dict, opts: DecodeOptions) -> tuple[np.ndarray, int | str]:
    """(uint8 image [C, H, W], raw label) of one sample; BadSample for a sample to skip,
    InputDataError for a label that makes the whole input unusable."""
    found = sample_image(sample)
    if found is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise BadSample(f"no image member (has: {', '.join(members)})")
    ext, data = found
    try:
        arr = decode_image(data, ext, opts.max_pixels)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad sample
        raise BadSample(f".{ext} is not a decodable image ({type(e).__name__}: {e})") from None
    label = sample_label(sample, opts.label_key)
    if isinstance(label, int) and not 0 <= label < MAX_LABEL:
        raise InputDataError(f".{opts.label_key} label {label} is {'negative' if label < 0 else 'implausibly large'}"
                             f" (labels must be class indices in [0, {MAX_LABEL}))",
                             path=sample.get("__url__"), key=sample.get("__key__"))
    return arr, label


def shape_mismatch(got: tuple, expected: tuple, *, path: str | None, key: str | None) -> InputDataError:
    """The error for an image whose shape differs from the first sample's (suggests --size)."""
    what = "channels" if got[0] != expected[0] else "image size"
    fix = ("" if got[0] != expected[0] else
           "; pass --size S to resize every image to SxS (see --resize-mode)")
    return InputDataError(f"mixed {what}: {got[0]}x{got[1]}x{got[2]} (CxHxW), expected "
                          f"{expected[0]}x{expected[1]}x{expected[2]} like the first sample{fix}", path=path, key=key)


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


def shard_samples(url: str, bad: BadSamples):
    """The samples of one shard (webdataset walks the tar), each with `__url__`.

    A shard that cannot be opened at all (a `pipe:` command or curl failing) is unusable input
    (InputDataError, like a missing file); unreadable data inside a shard and member names that
    are not `key.ext` relative paths are counted bad samples; a member twice in one sample is a
    duplicate key (InputDataError).
    """
    import webdataset as wds

    def handler(exn: Exception) -> bool:
        if describe_stream_error(exn).startswith("command"):
            raise InputDataError(f"cannot read shard: {describe_stream_error(exn)}", path=url) from None
        if "duplicate file name" in str(exn):
            raise InputDataError(f"a member appears twice in one sample ({str(exn).split(':')[0]})",
                                 path=url) from None
        bad.add(f"{url}: unreadable shard data: {describe_stream_error(exn)}")
        return True

    def select(name: str) -> bool:
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
