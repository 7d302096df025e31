"""Shards -> samples: the first stage of reading an input, and the tally of skipped samples.

`read_shard` streams one WebDataset shard as samples (dicts of member bytes keyed by extension,
with `__key__` and `__url__`): a local plain tar through the header scan of `tarscan`, anything
else (remote, gzip, truncated, unusual) through webdataset with its stream guarded (`EndGuard`).
`tar_truncation` says whether a local shard ends early, which stream readers do not notice;
`describe_stream_error` turns the reader's exceptions into messages a user can act on.
`BadSample` / `BadSamples`: a sample to skip, and the count and examples of those skipped, which
every later stage adds to (decode, labels, the store build, `dcompress shard`).
"""
from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from dataclasses import dataclass, field

from ..errors import InputDataError, TooManyBadSamples, unreadable
from . import tarscan
from .urls import is_remote, opener_url


DEFAULT_MAX_BAD = 100     # corrupt samples tolerated when the user gave no --max-bad


def bad_limit(max_bad: int | None) -> int:
    """The bound on corrupt samples: `--max-bad` as given, DEFAULT_MAX_BAD when not given. Not
    giving it also means a damaged shard is an input error (`store_build.damage_error`); giving
    it opts into skipping damaged shards, their lost samples counted against it."""
    return DEFAULT_MAX_BAD if max_bad is None else max_bad


class BadSample(ValueError):
    """A sample to skip and count (undecodable image, missing or malformed label). `cause` is
    the tally it is counted under (`BadSamples.causes`): image, label, label_key (the label
    member or field is missing: the wrong `--label-key` when no sample of a shard has it)."""

    def __init__(self, message: str, cause: str = "image"):
        super().__init__(message)
        self.cause = cause


@dataclass
class BadSamples:
    """Counts and examples of skipped input samples (reported in --json and the manifest), and
    the count per cause: image, label, label_key, member_name, stream (unreadable data inside a
    shard that still ends properly), damaged_shard (samples a damaged shard lost, once each)."""

    max_bad: int
    count: int = 0
    examples: list[str] = field(default_factory=list)
    causes: dict[str, int] = field(default_factory=dict)

    def add(self, message: str, cause: str = "image", n: int = 1) -> None:
        """Counts `n` samples skipped for `cause` (one example message)."""
        self.count += n
        self.causes[cause] = self.causes.get(cause, 0) + n
        if len(self.examples) < 20:
            self.examples.append(message)
        if self.count > self.max_bad:
            raise TooManyBadSamples(
                f"{self.count} bad samples exceed --max-bad {self.max_bad}; last: {message}")

    def merge(self, count: int, examples: list[str], causes: dict[str, int] | None = None) -> None:
        """Adds another worker's tally (examples kept up to 20, the bound checked once)."""
        if count == 0:
            return
        self.count += count
        for k, v in (causes or {"image": count}).items():
            self.causes[k] = self.causes.get(k, 0) + v
        self.examples.extend(examples[:max(0, 20 - len(self.examples))])
        if self.count > self.max_bad:
            raise TooManyBadSamples(
                f"{self.count} bad samples exceed --max-bad {self.max_bad}; last: {examples[-1]}")

    def as_dict(self) -> dict:
        return {"count": self.count, "causes": dict(sorted(self.causes.items())), "examples": self.examples}


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


def check_readable(url: str) -> None:
    """InputDataError naming a local shard this process cannot open for reading (permissions)."""
    if is_remote(url):
        return
    try:
        os.close(os.open(url, os.O_RDONLY))
    except OSError as e:
        raise unreadable(e, url, "shard") from None


def read_shard(url: str, bad: BadSamples, stream: BadSamples | None = None):
    """(the samples of one shard, each with `__url__`; True when the shard is known to be a
    complete tar, so `tar_truncation` need not look again). Unreadable data inside the shard
    goes to `stream` (default `bad`): the caller counts it once, as part of a truncation when
    the shard turns out to end early.

    A local uncompressed tar that passes `tarscan.scan` (well-formed, ended by the end-of-archive
    marker) is read by that header scan, ~5x faster than tarfile; everything else (remote,
    compressed, truncated or unusual shards) is walked by webdataset, as the scan yields the
    same samples where it applies. A shard that cannot be opened at all (a `pipe:` command or
    curl failing) is unusable input (InputDataError, like a missing file); unreadable data inside
    a shard and member names that are not `key.ext` relative paths are counted bad samples; a
    member twice in one sample is a duplicate key (InputDataError).
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    check_readable(url)
    stream = bad if stream is None else stream

    def handler(exn: Exception) -> bool:
        if describe_stream_error(exn).startswith("command"):
            raise InputDataError(f"cannot read shard: {describe_stream_error(exn)}", path=url) from None
        if "duplicate file name" in str(exn):
            raise InputDataError(f"a member appears twice in one sample ({str(exn).split(':')[0]})",
                                 path=url) from None
        stream.add(f"{url}: unreadable shard data: {describe_stream_error(exn)}", "stream")
        return True

    def select(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        if name.startswith("/") or ".." in name.split("/") or "." not in base or base.startswith("."):
            bad.add(f"{url}: member {name!r} is not a relative 'key.ext' name (skipped)", "member_name")
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
        try:
            for sample in pipeline:
                sample["__url__"] = url
                yield sample
        except OSError as e:                 # the file became unreadable while it was read
            raise unreadable(e, url, "shard") from None

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
    try:
        with open(url, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
    except OSError as e:
        raise unreadable(e, url, "shard") from None
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
