"""One shard's samples -> decoded images and raw labels: the unit of work of a decode worker.

`decode_sample` turns one WebDataset sample (a dict of member bytes) into a uint8 [C, H, W]
image and its raw label (an int, or a string to be mapped to a class index later); the
options that change the decoded bytes (`DecodeOptions`) are part of the decoded store's key.
Nothing here unpickles: image bytes go to the image decoder, labels are parsed as text.
"""
from __future__ import annotations

import gzip
import json
import re
import tarfile
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputDataError, TooManyBadSamples, UsageError
from ..limits import MAX_LABEL, MAX_PIXELS
from . import tarscan
from .codecs import IMAGE_EXTS, decode_image, parse_label
from .urls import is_remote, opener_url


RESIZE_MODES = ("crop", "pad", "stretch")
MAX_SIZE = 4096            # --size above this is a typo (a 4096x4096x3 image is 48 MiB decoded)
MAX_LABEL_CHARS = 256      # a longer string label is not a class name (a caption in the wrong key)
_MEMBER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DecodeOptions:
    """What decides the decoded bytes and the labels of an input (the decoded store's cache key:
    `to_dict()`; also recorded in the output manifest's `dcompress.source.decode`).

    label_key: where the label is: `cls` (an ASCII integer member), any other member name
        (`txt`, `label`, ...: text, an integer or a class name), or `json:<field>[.<sub>...]`
        (a field of the `.json` member; `<member>:<field>` for a member ending in `json`).
    max_pixels: images whose header declares more pixels are bad samples.
    size: every image becomes size x size (None: images are used as decoded and must all have
        one shape).
    resize_mode: with `size`: `crop` (the centred square of the shorter side, resized: resize
        shorter side + centre crop), `pad` (longer side resized to `size`, centred on black),
        `stretch` (resized to size x size, aspect ratio not kept).
    channels: 1 (grayscale) or 3 (RGB) converts every image; None keeps the decoded channels.
    class_names: the class list (`--class-names FILE`): string labels map to their position,
        integer labels index it. None: from the input manifest, a classes.txt or the labels.

    Invalid values raise UsageError (exit 2) on construction.
    """

    label_key: str = "cls"
    max_pixels: int | None = MAX_PIXELS
    size: int | None = None
    resize_mode: str = "crop"
    channels: int | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        label_key_parts(self.label_key)
        if self.max_pixels is not None and (not _is_int(self.max_pixels) or self.max_pixels < 1):
            raise UsageError(f"--max-pixels must be >= 1, got {self.max_pixels!r}")
        if self.size is not None and (not _is_int(self.size) or not 1 <= self.size <= MAX_SIZE):
            raise UsageError(f"--size must be an integer in [1, {MAX_SIZE}], got {self.size!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise UsageError(f"--resize-mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if self.size is None and self.resize_mode != "crop":
            raise UsageError(f"--resize-mode {self.resize_mode} needs --size S (the side of the square images)")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"--channels must be 1 or 3, got {self.channels!r}")
        if self.class_names is not None:
            names = tuple(self.class_names)
            object.__setattr__(self, "class_names", names)
            problem = class_names_problem(names)
            if problem:
                raise UsageError(f"--class-names: {problem}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def label_key_parts(key: str) -> tuple[str, tuple[str, ...] | None]:
    """`--label-key` -> (member, JSON field path or None); UsageError when malformed."""
    if not isinstance(key, str) or not key:
        raise UsageError(f"--label-key must be a member name or json:<field>, got {key!r}")
    member, sep, path = key.partition(":")
    if not _MEMBER.match(member):
        raise UsageError(f"--label-key {key!r}: {member!r} is not a member name (letters, digits, '_', '-', '.')")
    if not sep:
        return member, None
    if not (member == "json" or member.endswith(".json")):
        raise UsageError(f"--label-key {key!r}: fields ('member:field') are read from a JSON member "
                         f"(json:<field>), not from .{member}")
    parts = tuple(path.split("."))
    if not path or not all(parts):
        raise UsageError(f"--label-key {key!r}: the field path must be <field> or <field>.<sub> (no empty parts)")
    return member, parts


def class_names_problem(names) -> str | None:
    """Why `names` is no usable class list (empty, an empty or non-string name, a repeated
    name), or None."""
    if not names:
        return "the class list is empty"
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            return f"class {i} has an empty or non-string name ({n!r})"
        if n in seen:
            return f"class name {n!r} appears twice (classes {seen[n]} and {i})"
        seen[n] = i
    return None


def read_class_names(path, *, error=UsageError) -> tuple[str, ...]:
    """A class-names file (classes.txt): one name per line, in class-index order; surrounding
    whitespace is stripped, trailing empty lines ignored. An empty line in between, a repeated
    name, an empty or unreadable file raise `error` naming the file."""
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error("class-names file is not UTF-8 text", path=str(path)) from None
    except OSError as e:
        raise error(f"cannot read class-names file: {e.strerror or e}", path=str(path)) from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, line in enumerate(lines):
        if not line:
            raise error(f"line {i + 1} is empty (one class name per line, in class-index order)", path=str(path))
    problem = class_names_problem(lines)
    if problem:
        raise error(problem, path=str(path))
    return tuple(lines)


def shape_mismatch(url: str, key: str, got: tuple[int, ...], expected: tuple[int, ...]) -> InputDataError:
    """The error for an image whose shape differs from the first sample's (`got`, `expected`:
    C, H, W), with the option that fixes it: --size for sizes, --channels for channels."""
    shape = lambda s: "x".join(str(int(v)) for v in s)  # noqa: E731
    if got[0] != expected[0]:
        fix = (f"pass --channels {max(got[0], expected[0])} to convert every image"
               if {got[0], expected[0]} <= {1, 3} else "all images need the same channels")
        what = "channels"
    else:
        fix = ("pass --size S to resize every image to SxS (--resize-mode crop|pad|stretch; crop = resize "
               "the shorter side, then centre-crop)")
        what = "image sizes"
    return InputDataError(f"mixed {what}: {shape(got)} (CxHxW), expected {shape(expected)} like the first "
                          f"sample; {fix}", path=url, key=key)


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
    """The raw label of `sample` under `key` (`DecodeOptions.label_key`): an int, or a class
    name (a stripped string) to be mapped to an index later. BadSample when the member or the
    field is missing or the value is no label.

    `cls`: an ASCII integer (nothing else). Another member (`txt`, ...): UTF-8 text, an integer
    when it reads as one, else a class name. `json:<field>[.<sub>]`: the member parsed with
    `json.loads` (never unpickled), the field walked through objects (and lists by index); an
    integer stays an int, a string is a class name (even "3": JSON says what it is).
    """
    member, path = label_key_parts(key)
    raw = sample.get(member)
    if raw is None:
        members = ", ".join(sorted(k for k in sample if not k.startswith("__")))
        raise BadSample(f"missing .{member} label (has: {members}; pick the label with --label-key)")
    if path is None and member == "cls":
        try:
            return parse_label(raw)
        except ValueError as e:
            raise BadSample(f".{key} is {e} ({raw[:24]!r})") from None
    if path is None:
        try:
            text = raw.decode("utf-8").strip() if isinstance(raw, bytes) else str(raw).strip()
        except UnicodeDecodeError:
            raise BadSample(f".{member} is not UTF-8 text ({raw[:24]!r})") from None
        return _label_value(text, f".{member}", numeric_text=True)
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:   # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise BadSample(f".{member} is not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None
    for i, part in enumerate(path):
        where = ".".join(path[:i + 1])
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            full = ".".join(path)
            raise BadSample(f"missing label field {full!r} in .{member}"
                            + (f" (no {where!r})" if where != full else ""))
    return _label_value(value, f".{member} field {'.'.join(path)!r}", numeric_text=False)


def _label_value(value, where: str, *, numeric_text: bool) -> int | str:
    """A parsed label value -> int or class name; BadSample for anything else."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise BadSample(f"{where} is empty")
        if numeric_text:
            try:
                return parse_label(value)
            except ValueError as e:
                if str(e) != "not an integer":
                    raise BadSample(f"{where} is {e} ({value[:24]!r})") from None
        if len(value) > MAX_LABEL_CHARS:
            raise BadSample(f"{where} is {len(value)} characters long, not a class name ({value[:24]!r}...)")
        return value
    if _is_int(value):
        if not -(2 ** 63) <= value < 2 ** 63:
            raise BadSample(f"{where} is outside the int64 range")
        return value
    kind = "a boolean" if isinstance(value, bool) else "null" if value is None else f"a {type(value).__name__}"
    raise BadSample(f"{where} is {kind} ({str(value)[:24]!r}), not an integer class index or a class name")


def transform_image(arr: np.ndarray, opts: DecodeOptions) -> np.ndarray:
    """The decoded image [C, H, W] with `opts.channels` and `opts.size` applied (Pillow).

    Channels: RGB -> L with Pillow's ITU-R 601-2 luma; L -> RGB repeats the channel. Resizing
    uses Pillow's `Image.resize` with the BILINEAR filter, which is antialiased (its support
    grows with the downscale factor, like torchvision's `Resize(antialias=True)`) and
    deterministic: `crop` resizes the centred square of side min(H, W) to size x size (one
    resampling with a sub-pixel box: resize shorter side + centre crop without the intermediate
    rounding); `pad` resizes so the longer side is `size` (the shorter rounded, at least 1) and
    centres it on black (offset (size - side) // 2); `stretch` resizes to size x size.
    """
    from PIL import Image

    c = arr.shape[0]
    want_c = opts.channels or c
    s = opts.size
    if want_c == c and (s is None or arr.shape[1:] == (s, s)):
        return arr
    im = Image.fromarray(arr[0] if c == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0)))
    if want_c != c:
        im = im.convert("L" if want_c == 1 else "RGB")
    if s is not None and im.size != (s, s):
        w, h = im.size
        if opts.resize_mode == "stretch":
            im = im.resize((s, s), Image.Resampling.BILINEAR)
        elif opts.resize_mode == "crop":
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            im = im.resize((s, s), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        else:
            scale = s / max(w, h)
            nw, nh = max(1, min(s, round(w * scale))), max(1, min(s, round(h * scale)))
            canvas = Image.new(im.mode, (s, s), 0)
            canvas.paste(im.resize((nw, nh), Image.Resampling.BILINEAR), ((s - nw) // 2, (s - nh) // 2))
            im = canvas
    out = np.asarray(im)
    out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    return np.array(out, dtype=np.uint8, order="C")


def decode_sample(sample: dict, opts: DecodeOptions) -> tuple[np.ndarray, int | str]:
    """(uint8 image [C, H, W], raw label: int or class name) of one sample, with `opts.size`,
    `opts.resize_mode` and `opts.channels` applied; BadSample for a sample to skip,
    InputDataError for a label that makes the whole input unusable."""
    found = sample_image(sample)
    if found is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise BadSample(f"no image member (has: {', '.join(members)})")
    ext, data = found
    try:
        arr = decode_image(data, ext, opts.max_pixels)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad sample
        why = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the image bytes", str(e))   # no addresses: reports repeat
        raise BadSample(f".{ext} is not a decodable image ({type(e).__name__}: {why})") from None
    label = sample_label(sample, opts.label_key)
    if isinstance(label, int) and not 0 <= label < MAX_LABEL:
        where = opts.label_key if ":" in opts.label_key else f".{opts.label_key}"
        raise InputDataError(f"{where} label {label} is {'negative' if label < 0 else 'implausibly large'}"
                             f" (labels must be class indices in [0, {MAX_LABEL}))",
                             path=sample.get("__url__"), key=sample.get("__key__"))
    return transform_image(arr, opts), label


_CURL_STATUS = {6: "could not resolve host", 7: "could not connect", 22: "HTTP error (status >= 400)",
                28: "timed out", 35: "TLS handshake failed", 56: "connection reset"}


def describe_stream_error(exn: Exception) -> str:
    """The reader's exception, with the exit status of a `pipe:` command (or of curl for http
    urls) instead of an object repr: `pipe:aws s3 cp ...` exited with status 1."""
    from webdataset.gopen import Pipe

    args = [a._stream if isinstance(a, EndGuard) else a for a in getattr(exn, "args", ())]
    pipe = next((a for a in args if isinstance(a, Pipe)), None)
    if pipe is None:     # webdataset appends " @ <stream repr>" and (stream, url) to the message: drop them
        first = exn.args[0] if exn.args and isinstance(exn.args[0], str) else str(exn)
        return first.split(" @ <", 1)[0]
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


def read_shard(url: str, bad: BadSamples):
    """(the samples of one shard, each with `__url__`; True when the shard is known to be a
    complete tar, so `tar_truncation` need not look again).

    A local uncompressed tar that passes `tarscan.scan` (well-formed, ended by the end-of-archive
    marker) is read by that header scan, ~5x faster than tarfile; everything else (remote,
    compressed, truncated or unusual shards) is walked by webdataset, as the scan yields the
    same samples where it applies. A shard that cannot be opened at all (a `pipe:` command or
    curl failing) is unusable input (InputDataError, like a missing file); unreadable data inside
    a shard and member names that are not `key.ext` relative paths are counted bad samples; a
    member twice in one sample is a duplicate key (InputDataError).
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

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

    index = None if is_remote(url) else tarscan.scan(url)
    if index is not None:
        pipeline = group_by_keys(tarscan.files(index, url, select, handler), handler=handler)
    else:                                    # webdataset's tarfile_to_samples, its stream guarded
        def opened(src):
            for source in url_opener(src, handler=handler):
                source["stream"] = EndGuard(source["stream"])
                yield source

        pipeline = group_by_keys(tar_file_expander(opened([{"url": opener_url(url)}]), handler=handler,
                                                   select_files=select), handler=handler)

    def samples():
        for sample in pipeline:
            sample["__url__"] = url
            yield sample

    return samples(), index is not None


class EndGuard:
    """A shard's byte stream that refuses to be read at its end for ever.

    tarfile's stream mode (webdataset's reader) skips a member by reading it block after block,
    also past the end of the stream, where every read returns nothing. A header declaring a huge
    size (a base-256 size field reaches 2^88 bytes) made that loop run for ever on a 10 KB
    shard. After `limit` consecutive reads at the end (16 KiB blocks: 4 GiB past the end, well
    under a second) the next one raises tarfile.ReadError, which the reader counts as unreadable
    shard data."""

    def __init__(self, stream, limit: int = 1 << 18):
        self._stream, self._limit, self._empty = stream, limit, 0

    def read(self, *args) -> bytes:
        data = self._stream.read(*args)
        if data:
            self._empty = 0
        else:
            self._empty += 1
            if self._empty > self._limit:
                raise tarfile.ReadError("a member's declared size runs far past the end of the shard")
        return data

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __repr__(self) -> str:
        return repr(self._stream)


def tar_truncation(url: str) -> str | None:
    """Why a local tar shard is truncated, or None when it is complete (or not local).

    Stream readers stop silently when a tar is cut at a member boundary; a complete tar ends
    with two zero blocks after its last member, which is what this checks. Plain tars are
    checked by hopping from header to header (`tarscan.tar_end`: one 512-byte read per member, the
    member data skipped); gzip-compressed tars (`.tar.gz`) with tarfile on their decompressed
    stream.
    """
    if is_remote(url):
        return None
    with open(url, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = (lambda: gzip.open(url, "rb")) if gz else (lambda: open(url, "rb"))
    try:
        if gz:
            with opener() as f, tarfile.open(fileobj=f, mode="r:") as tf:
                end = 0
                for m in tf:
                    end = m.offset_data + 512 * ((m.size + 511) // 512)
        else:
            with opener() as f:
                end = tarscan.tar_end(f)
        with opener() as f:
            f.seek(end)
            tail = f.read(1024)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        return f"unreadable {'gzip ' if gz else ''}tar ({e})"
    except (ValueError, OverflowError):                     # seeking to a huge declared member end
        return "truncated tar: a member's declared size runs past the end of the file"
    if len(tail) < 1024:
        return f"truncated tar: data runs to byte {end} and the end-of-archive marker is missing"
    if tail != bytes(1024):
        return f"truncated tar: no end-of-archive marker after byte {end}"
    return None
