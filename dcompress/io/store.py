"""The decoded store: an input decoded once into one raw uint8 array on disk, opened in milliseconds.

The first command on an input builds it (`store_build.build_store`: its shards decoded by
`workers` processes) into `<cache>/stores/<key>/`:

    images.u8    raw uint8 [N, C, H, W], C order (`np.memmap(path, np.uint8, "r", shape=...)` opens it)
    labels.npy   int64 [N] class indices
    keys.npy     fixed-width UTF-8 bytes [N], the sample keys
    meta.json    shape, class names and their source, mean/std, fingerprint, urls, description,
                 decode options, bad samples (with their causes), the input accounting
                 (`input`: samples expected, read and used, damaged shards), class counts, build
                 time and workers, creation time, store format version

Every later command on the same input opens it (`open_store`) in milliseconds. The key
(`store_key`) is a hash of what decides the decoded bytes: the store format, the decode options,
the input manifest's class names and a classes.txt beside the shards, the JPEG and PNG decoders,
and each shard's identity — absolute path, size and mtime (plus its input-manifest row's md5sum,
nsamples and filesize, which the shard is checked against); never the decoded pixels. A reopened
store is held to the same reading limits as a new one (`check_damage`, from its meta). A
changed shard changes the key, so a store is rebuilt, never
silently reused. A remote input (pipe:, http, s3) whose manifest gives no md5 has no stable
identity: its store is built in the cache, opened, and deleted at once (the open file lives until
the process exits).

Rows are read with `pread` on the open file (runs of consecutive rows in one call), not through a
memory map: mapped pages count towards the process's resident set, so an epoch over a 60 GB store
would show 60 GB RSS; with `pread` the kernel's page cache holds the data and the process holds a
batch. Builds are serialised by an exclusive `flock` on `<key>.build.lock` (another process
waits, then opens the finished store); a process holds a shared lock on `<key>.lock` for as long
as it has the store open, so `dcompress cache rm` never deletes a store in use. A damaged store,
or one of another format version, is moved to `<cache>/quarantine/` and rebuilt.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DcompressError, TooManyBadSamples, os_error, unreadable
from .atomic import wait_flock
from .codecs import jpeg_decoder, png_decoder
from .decode import DecodeOptions
from .labels import classes_txt_for
from .store_build import STORE_VERSION, build_store, damage_error, manifest_rows
from .stream import bad_limit
from .urls import ResolvedInput, is_remote

STORES = "stores"


# ------------------------------------------------------------------------------------ reading rows

class DecodedStore:
    """A built store's pixels as a `core.Store`: `read(idx)` -> uint8 [len(idx), C, H, W]."""

    def __init__(self, folder: Path, meta: dict, fd: int, lock_fd: int | None):
        self.folder, self.meta, self.fd, self.lock_fd = folder, meta, fd, lock_fd
        self.shape = tuple(int(v) for v in meta["shape"])
        self.row = int(np.prod(self.shape[1:]))

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.int64).reshape(-1)
        n = int(idx.numel())
        out = np.empty((n, *self.shape[1:]), dtype=np.uint8)
        if n == 0:
            return torch.from_numpy(out)
        order = torch.argsort(idx, stable=True)
        rows = idx[order].numpy()
        if rows[0] < 0 or rows[-1] >= self.shape[0]:
            raise IndexError(f"row index out of range [0, {self.shape[0]})")
        flat = out.reshape(n, self.row)
        dest = order.numpy()
        starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)   # runs of consecutive rows
        ends = np.append(starts[1:], n)
        buf = None
        for s, e in zip(starts.tolist(), ends.tolist()):
            first, count = int(rows[s]), int(rows[e - 1]) - int(rows[s]) + 1
            data = os.pread(self.fd, count * self.row, first * self.row)
            if len(data) != count * self.row:
                raise DcompressError(f"decoded store is shorter than its header says (rows {first}..{first + count})",
                                     path=str(self.folder / "images.u8"))
            buf = np.frombuffer(data, dtype=np.uint8).reshape(count, self.row)
            flat[dest[s:e]] = buf[rows[s:e] - first]
        return torch.from_numpy(out)

    def close(self) -> None:
        for fd in (self.fd, self.lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self.lock_fd = None

    def __del__(self):
        self.close()


class KeyList:
    """The sample keys as a read-only sequence of str over one fixed-width bytes array."""

    def __init__(self, raw: np.ndarray):
        self.raw = raw

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [v.decode() for v in self.raw[i]]
        return self.raw[i].decode()

    def __iter__(self):
        return (v.decode() for v in self.raw)


# ------------------------------------------------------------------------------------ identity

def shard_identity(url: str, rows: dict[str, dict]) -> dict:
    """What names one shard's content without reading it: path + size + mtime, plus what its
    input-manifest row says of it (md5sum, nsamples, filesize: what the shard is checked
    against, so an edited row is checked again)."""
    ident = {"url": url}
    if not is_remote(url):
        try:
            st = os.stat(url)
        except OSError as e:
            raise unreadable(e, url, "shard") from None
        ident = {"path": str(Path(url).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    row = rows.get(Path(url).name) or {}
    if row.get("md5sum"):
        ident["md5"] = row["md5sum"]
    ident.update({f"manifest_{k}": row[k] for k in ("nsamples", "filesize") if row.get(k) is not None})
    return ident


def store_key(inp: ResolvedInput, opts: DecodeOptions) -> tuple[str, bool]:
    """(key, cacheable): the store's name for this input; not cacheable for a remote shard with no
    md5 in its manifest (nothing says whether the object changed)."""
    rows = manifest_rows(inp)
    idents = [shard_identity(u, rows) for u in inp.urls]
    names = (inp.manifest or {}).get("dcompress", {}).get("class_names") if isinstance(
        (inp.manifest or {}).get("dcompress"), dict) else None
    txt = classes_txt_for(inp)                     # read automatically: its content decides the labels
    txt_hash = hashlib.sha256(txt.read_bytes()).hexdigest() if txt is not None and txt.is_file() else None
    blob = json.dumps({"version": STORE_VERSION, "decode": opts.to_dict(), "class_names": names,
                       "classes_txt": txt_hash, "shards": idents, "jpeg_decoder": jpeg_decoder(),
                       "png_decoder": png_decoder()}, sort_keys=True).encode()
    cacheable = all("path" in i or "md5" in i for i in idents)
    return hashlib.sha256(blob).hexdigest()[:32], cacheable


# ------------------------------------------------------------------------------------ opening

def stores_dir(cache: Path) -> Path:
    return Path(cache) / STORES


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _valid_meta(folder: Path) -> dict | None:
    """The store's meta when its files agree with it, else None (damaged, foreign, old format)."""
    try:
        meta = json.loads((folder / "meta.json").read_bytes())
        shape = [int(v) for v in meta["shape"]]
        if meta.get("version") != STORE_VERSION or len(shape) != 4:
            return None
        if os.path.getsize(folder / "images.u8") != int(np.prod(shape)):
            return None
        for name in ("labels.npy", "keys.npy"):
            if np.load(folder / name, mmap_mode="r", allow_pickle=False).shape != (shape[0],):   # header only
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _open(folder: Path, meta: dict, lock_fd: int | None, *, unlink: bool = False) -> tuple[DecodedStore, dict]:
    fd = os.open(folder / "images.u8", os.O_RDONLY)
    arrays = _arrays(folder)
    if unlink:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        os.utime(folder / "meta.json")                     # last use, for `cache prune`
    return DecodedStore(folder, meta, fd, lock_fd), arrays


def _lock(path: Path, mode: int, note: Callable[[str], None] | None, what: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        wait_flock(fd, mode, note, path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _arrays(folder: Path) -> dict:
    return {"labels": np.load(folder / "labels.npy", allow_pickle=False),
            "keys": np.load(folder / "keys.npy", allow_pickle=False)}


def open_store(inp: ResolvedInput, opts: DecodeOptions, *, cache: Path, max_bad: int | None, workers: int | None = None,
               progress: Callable[[int, int], None] | None = None,
               note: Callable[[str], None] | None = None) -> tuple[DecodedStore, dict, dict]:
    """(store, arrays {labels, keys}, info) for `inp`: the cached store when one matches, else one
    built now. `info` says where it is, whether it was reused and how long the build took."""
    key, cacheable = store_key(inp, opts)
    root = stores_dir(cache)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, root, "create the store cache") from None
    workers = workers or _default_workers()
    if not cacheable:
        folder = root / f"ephemeral-{os.getpid()}-{key[:12]}"
        shutil.rmtree(folder, ignore_errors=True)
        meta = build_store(inp, opts, folder, max_bad=max_bad, workers=workers, progress=progress)
        store, arrays = _open(folder, meta, None, unlink=True)
        return store, arrays, {"path": None, "key": key, "reused": False, "build_s": meta["build_s"],
                               "workers": meta["workers"], "why_not_cached": "remote shards without md5"}
    folder, lock_path = root / key, root / f"{key}.lock"
    mine = _OPEN.get(key)
    if mine is not None and mine.fd is not None and _valid_meta(folder) is not None:
        meta = mine.meta                            # this process has it open: share the descriptor
        lock_fd, reused = None, True
    else:
        lock_fd, meta, reused = _locked_build(inp, opts, folder, lock_path, root, key, cache=cache, max_bad=max_bad,
                                              workers=workers, progress=progress, note=note)
    try:
        check_damage(meta, max_bad)
    except DcompressError:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    if lock_fd is None:
        store, arrays = mine, _arrays(folder)
    else:
        store, arrays = _open(folder, meta, lock_fd)
        _OPEN[key] = store
    return store, arrays, {"path": str(folder), "key": key, "reused": reused,
                           "build_s": None if reused else meta["build_s"], "workers": meta.get("workers")}


def check_damage(meta: dict, max_bad: int | None) -> None:
    """The input's damage against the reading limits, the same for a store just built and one
    reopened (its accounting is in its meta): damaged shards are an InputDataError unless
    `max_bad` was given; bad samples (lost ones included) past the bound TooManyBadSamples."""
    damaged = (meta.get("input") or {}).get("damaged_shards") or []
    if damaged and max_bad is None:
        raise damage_error(damaged)
    count, limit = meta["bad_samples"]["count"], bad_limit(max_bad)
    if count > limit:
        ex = meta["bad_samples"]["examples"]
        raise TooManyBadSamples(f"{count} bad samples exceed --max-bad {limit}" + (f"; last: {ex[-1]}" if ex else ""))


_OPEN: "weakref.WeakValueDictionary[str, DecodedStore]" = weakref.WeakValueDictionary()   # key -> open store


def _locked_build(inp, opts, folder: Path, lock_path: Path, root: Path, key: str, *, cache: Path, max_bad: int | None,
                  workers: int, progress, note) -> tuple[int, dict, bool]:
    """(fd holding a shared lock on `<key>.lock`, meta, reused): opens or builds the store.

    Two locks: `<key>.build.lock` (exclusive, held only while checking and building: a second
    command waits for a build in progress, then opens the result) and `<key>.lock` (shared, held
    for as long as the store is open: `cache rm` takes it exclusively). Holding the shared lock
    never blocks a builder, so processes that open the same input together (torchrun ranks) do
    not wait on one another. Both are released if anything fails."""
    build_fd = lock_fd = None
    try:
        build_fd = _lock(root / f"{key}.build.lock", fcntl.LOCK_EX, note, "building this input's decoded store")
        lock_fd = _lock(lock_path, fcntl.LOCK_SH, note, "removing this decoded store")
        meta = _valid_meta(folder)
        reused = meta is not None
        if meta is None:
            if folder.exists():
                _quarantine(folder, cache, note)        # its readers keep their open file
            _clean_dead_builds(root, key)
            meta = build_store(inp, opts, folder, max_bad=max_bad, workers=workers, progress=progress)
        return lock_fd, meta, reused
    except BaseException as e:
        if lock_fd is not None:
            os.close(lock_fd)
        if isinstance(e, OSError):
            raise os_error(e, folder, "open the decoded store") from None
        raise
    finally:
        if build_fd is not None:
            os.close(build_fd)


def _quarantine(folder: Path, cache: Path, note) -> None:
    dest = Path(cache) / "quarantine" / f"store-{folder.name}-{int(time.time())}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(folder, dest)
    if note is not None:
        note(f"decoded store {folder} was damaged or of another format; moved to {dest} and rebuilt")


def _clean_dead_builds(root: Path, key: str) -> None:
    """Temp folders of builders of this key that died (we hold its exclusive lock)."""
    for p in root.glob(f"{key}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
