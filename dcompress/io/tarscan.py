"""A header scan of local, uncompressed, well-formed tar shards: the fast path of the reader.

webdataset reads every member through Python's `tarfile`, which builds a TarInfo object per
header (~25 us per member here: two thirds of a decode worker's time on 32 px JPEGs). For a
local plain tar this module walks the 512-byte headers itself, with tarfile's checks (the
checksum, the numeric fields, the same name rules) and reads member bytes with `os.pread`;
grouping members into samples stays webdataset's (`group_by_keys`). A shard is scanned whole
before its first sample is yielded, and anything outside the plain subset makes `scan` return
None so the caller reads that shard through webdataset exactly as before:

* compressed (gzip) or remote shards, which are never scanned;
* a header with a bad checksum (including one that only the signed sum matches), a non-octal
  or base-256 number, or a name or pax value that is not UTF-8;
* a truncated shard: a member running past the end of the file, or no end-of-archive marker;
* pax global headers (`g`), Solaris extended headers (`X`), GNU sparse files (`S`, or pax
  `GNU.sparse.*`), a pax `hdrcharset`, or a malformed pax record;
* a non-regular member (directory, link, device) whose size field is not 0 (tarfile would
  read its data as the next header).

So a broken shard is reported by the same code as before; only well-formed shards take this
path, and `tests/unit/test_tarscan.py` checks that it yields the same samples, bad-sample
messages and errors as webdataset on every header format tarfile writes (ustar prefixes, GNU
long names, pax paths), on generated member mixes and on tars with corrupted headers.

Cost of scanning first: the shard is read twice, once by the scan through a 64 KiB window and
once for the samples (from the page cache, in practice); a member larger than the window costs
the scan one window read, not its size. `tar_end` at the bottom is tarfile's own, wider
acceptance, for the truncation check of the shards the scan hands back.
"""
from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = frozenset(b"07\0")                          # REGTYPE, CONTTYPE, AREGTYPE: tarfile's isreg()
_OTHER_KNOWN = frozenset(b"123456")                     # links, devices, directories, fifos
_SKIP_META = re.compile(r"__[^/]*__($|/)")              # webdataset's skip_meta
_COMPRESSED = (b"\x1f\x8b\x08", b"\x5d\x00\x00\x80", b"\xfd7zXZ")   # gzip, lzma, xz magics (tarfile)
_MAX_EXTENDED = 1 << 20                                 # bytes of a GNU long name or pax header read here
_PAX_PATH_ONLY = frozenset({"path", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname",
                            "linkpath", "comment"})


@dataclass(frozen=True)
class TarIndex:
    """The regular members of a well-formed local tar, in archive order: (name, offset, size)."""

    path: str
    members: list[tuple[str, int, int]]


def _number(field: bytes) -> int | None:
    """tarfile's `nti` for octal fields; None for what this scan leaves to tarfile (base-256,
    malformed)."""
    if field[0] & 0x80:
        return None
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if not text.isdigit() or b"8" in text or b"9" in text:
        return None
    return int(text, 8)


def _padded(size: int) -> int:
    """A member's data size rounded up to whole blocks: where its next header starts."""
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _unsigned_checksum(block: bytes) -> int:
    """A header's checksum as ustar defines it: the byte sum with the checksum field as spaces."""
    return 256 + sum(block) - sum(block[148:156])


def _text(field: bytes) -> str | None:
    """tarfile's `nts` with UTF-8 (None when the bytes are not UTF-8: left to tarfile)."""
    try:
        return field.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _pax(data: bytes) -> dict[str, str] | None:
    """The records of a pax extended header ("<len> <key>=<value>\\n"), or None when malformed
    or carrying anything that changes how tarfile reads the next member beyond its path and
    size (sparse maps, header charsets)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            return None
        length = int(data[pos:space])
        record = data[pos:pos + length]
        if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n") or b"=" not in record:
            return None
        key_b, value_b = record[space - pos + 1:-1].split(b"=", 1)
        try:
            key, value = key_b.decode("utf-8"), value_b.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if key not in _PAX_PATH_ONLY and not key.startswith(("SCHILY.", "LIBARCHIVE.")):
            return None
        out[key] = value
        pos += length
    return out


class _Window:
    """Sequential reads of a file through a window of `size` bytes (os.pread: a file that
    shrinks while it is read gives short reads, never a crash as an mmap would)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.start, self.data = 0, b""

    def get(self, a: int, b: int) -> bytes:
        if not (self.start <= a and b <= self.start + len(self.data)):
            self.start, self.data = a, os.pread(self.fd, max(self.size, b - a), a)
        return self.data[a - self.start:b - self.start]


def scan(path: str) -> TarIndex | None:
    """The index of a local plain tar at `path`, or None when it is not a well-formed plain tar
    (see the module docstring): the caller then reads it through webdataset/tarfile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (OSError, ValueError):
        return None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 10, 0)
        if size < 2 * BLOCK or head.startswith(_COMPRESSED) or (head[:3] == b"BZh" and head[4:10] == b"1AY&SY"):
            return None                                 # tarfile's "r|*" would take it for a compressed stream
        return _scan(path, _Window(fd, 64 << 10), size)     # small: a big member costs one window, not its size
    except OSError:
        return None
    finally:
        os.close(fd)


def _valid_numbers(block: bytes, seen: set) -> bool:
    """tarfile parses mode, uid, gid, mtime, devmajor and devminor too, and rejects the header
    when one is malformed; checked once per distinct combination (they repeat in a shard)."""
    fields = block[100:124] + block[136:148] + block[329:345]
    if fields in seen:
        return True
    if any(_number(fields[a:b]) is None for a, b in ((0, 8), (8, 16), (16, 24), (24, 36), (36, 44), (44, 52))):
        return False
    seen.add(fields)
    return True


def _scan(path: str, buf: _Window, n: int) -> TarIndex | None:
    members: list[tuple[str, int, int]] = []
    seen: set[bytes] = set()
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] | None = None
    while True:
        if pos + BLOCK > n:
            return None                                 # no end-of-archive marker
        block = buf.get(pos, pos + BLOCK)
        if len(block) < BLOCK:
            return None                                 # the file shrank while it was read
        if block == _ZERO_BLOCK:
            if long_name is not None or pax is not None or buf.get(pos + BLOCK, pos + 2 * BLOCK) != _ZERO_BLOCK:
                return None                             # an extended header with no member, or one zero block
            return TarIndex(path, members)
        chksum = _number(block[148:156])
        if chksum is None or chksum != _unsigned_checksum(block):
            return None                                 # bad (or only signed) checksum: tarfile decides
        size = _number(block[124:136])
        if size is None or not _valid_numbers(block, seen):
            return None
        kind = block[156]
        start = pos + BLOCK
        if start + size > n:
            return None                                 # member data past the end of the file
        pos = start + _padded(size)
        if kind in (0x4C, 0x78) and size > _MAX_EXTENDED:
            return None                                 # a giant long name or pax header: tarfile's business
        if kind == 0x4C:                                # 'L': GNU long name of the next member
            if long_name is not None or pax is not None:
                return None
            long_name = _text(buf.get(start, pos))      # tarfile reads the padded blocks, up to a NUL
            if long_name is None:
                return None
            continue
        if kind == 0x4B:                                # 'K': GNU long link name: not used here
            continue
        if kind == 0x78:                                # 'x': pax header of the next member
            if pax is not None or long_name is not None:
                return None
            pax = _pax(buf.get(start, pos))             # records are parsed from the padded blocks too
            if pax is None:
                return None
            continue
        name = _text(block[:100])
        prefix = _text(block[345:500])
        if name is None or prefix is None:
            return None
        if kind == 0 and name.endswith("/"):
            kind = 0x35                                 # V7 directory
        if kind not in _REGULAR and kind not in _OTHER_KNOWN:
            return None                                 # sparse, vendor, global or Solaris extended headers
        if prefix:
            name = prefix + "/" + name
        if long_name is not None:
            name, long_name = long_name, None
        if pax is not None:
            if "size" in pax:
                if not pax["size"].isdigit():
                    return None
                size = int(pax["size"])
                if start + size > n:
                    return None
                pos = start + _padded(size)
            if "path" in pax:
                name = pax["path"].rstrip("/")
            pax = None
        if kind in _REGULAR:
            members.append((name, start, size))
        elif size:
            return None                                 # tarfile would read a non-regular member's data as headers


def files(index: TarIndex, url: str, select: Callable[[str], bool] | None = None,
          handler: Callable[[Exception], bool] | None = None) -> Iterator[dict]:
    """The regular members of a scanned shard as webdataset's file dicts ({fname, data, __url__}),
    with webdataset's `tar_file_iterator` filters: metadata names (`__*__`) are skipped and
    `select` decides the rest. Data are bytes read with os.pread through a 4 MiB window.

    A read that fails or comes back short (the file shrank or changed after the scan) goes to
    `handler` as a tarfile.ReadError (raised when there is none), and the shard ends there."""
    fd = os.open(index.path, os.O_RDONLY)
    try:
        buf = _Window(fd, 4 << 20)
        for name, start, size in index.members:
            if "/" not in name and name.startswith("__") and name.endswith("__"):
                continue
            if _SKIP_META.match(name):
                continue
            if select is not None and not select(name):
                continue
            try:
                data = buf.get(start, start + size)
                if len(data) != size:
                    raise tarfile.ReadError(f"unexpected end of data in member {name!r} "
                                            "(the file shrank while it was read)")
            except (OSError, tarfile.ReadError) as e:
                exn = e if isinstance(e, tarfile.ReadError) else tarfile.ReadError(f"{name!r}: {e}")
                if handler is None:
                    raise exn from None
                handler(exn)
                return
            yield {"fname": name, "data": data, "__url__": url}
    finally:
        os.close(fd)


# ------------------------------------------------ tarfile's own walk, for the truncation check

def tar_end(f) -> int:
    """Where the data of the last member of a plain tar ends (padded to 512), for
    `stream.tar_truncation` on shards the scan did not take. It walks the headers as `tarfile`
    does: it stops at a zero block, a short block or an invalid header, and raises ReadError when
    the very first header is short or invalid. Extended headers (pax, GNU long names) are members
    whose data is the next header's metadata: skipping them lands on that header."""
    pos = end = 0
    while True:
        f.seek(pos)
        block = f.read(512)
        if len(block) == 512 and block.count(0) == 512:     # end-of-archive marker (also as the first block)
            return end
        if len(block) < 512 or not _valid_header(block):
            if pos == 0:
                raise tarfile.ReadError("empty file" if not block else "invalid header" if len(block) == 512
                                        else "truncated header")
            return end
        size = _header_size(block)
        end = pos = pos + BLOCK + _padded(size)
        if block[156:157] in (b"x", b"g", b"L", b"K"):      # extended header: the member follows
            end = pos


def _header_size(block: bytes) -> int:
    field = block[124:136]
    if field[0] & 0x80:                                      # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _valid_header(block: bytes) -> bool:
    """tarfile's own acceptance (wider than the scan's): numeric size and checksum fields (base-256
    sizes too), the checksum matching the unsigned or the signed sum."""
    try:
        _header_size(block)
        text = block[148:156].split(b"\0", 1)[0].strip()
        chksum = int(text, 8)
    except ValueError:
        return False
    if chksum == _unsigned_checksum(block):
        return True
    signed = np.frombuffer(block[:148] + block[156:], dtype=np.int8).sum(dtype=np.int64)
    return chksum == 256 + int(signed)
