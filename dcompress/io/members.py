"""The samples of a written output as member bytes, every shard checked against the manifest
(size, md5, sample count) first. Torch-free: `inspect` reads outputs without loading torch, and
the loader (io/loader.py) validates and converts these samples.

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
from typing import Iterator

from ..errors import InputDataError
from .codecs import parse_label
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
