"""The decoded store: an input decoded once, by parallel workers, into one raw uint8 array on disk.

The first command on an input decodes its shards (one shard per task, `workers` processes via a
`torch.utils.data.DataLoader` over the shard list) into `<cache>/stores/<key>/`:

    images.u8    raw uint8 [N, C, H, W], C order (`np.memmap(path, np.uint8, "r", shape=...)` opens it)
    labels.npy   int64 [N] class indices
    keys.npy     fixed-width UTF-8 bytes [N], the sample keys
    meta.json    shape, class names, mean/std, fingerprint, urls, shard identities, decode options,
                 bad samples, class counts, build time, store format version

Every later command on the same input opens it in milliseconds. The key is a hash of what decides
the decoded bytes: the store format, the decode options, the input manifest's class names, and each
shard's identity — absolute path, size and mtime (plus the manifest's md5 when it lists one); never
the decoded pixels. A changed shard changes the key, so a store is rebuilt, never silently reused.
A remote input (pipe:, http, s3) whose manifest gives no md5 has no stable identity: its store is
built in the cache, opened, and deleted at once (the open file lives until the process exits).

Rows are read with `pread` on the open file (runs of consecutive rows in one call), not through a
memory map: mapped pages count towards the process's resident set, so an epoch over a 60 GB store
would show 60 GB RSS; with `pread` the kernel's page cache holds the data and the process holds a
batch. Builds are atomic (a temp folder renamed into place) and serialised by an `flock` on
`<key>.lock` (other processes wait, then open the finished store); readers hold a shared lock,
so `dcompress cache rm` never deletes a store in use.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DcompressError, InputDataError, TooManyBadSamples, os_error
from ..faults import crash_point
from .codecs import jpeg_decoder, png_decoder
from .decode import (BadSample, BadSamples, DecodeOptions, decode_sample, read_shard, shape_mismatch,
                     tar_truncation)
from .labels import assign_classes, classes_txt_for
from .safe_write import write_json
from .urls import ResolvedInput, is_remote

STORE_VERSION = 1
STORES = "stores"
_MB = 1 << 20


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

def shard_identity(url: str, manifest_md5: dict[str, str]) -> dict:
    """What names one shard's content without reading it: path + size + mtime (+ manifest md5)."""
    ident = {"url": url}
    if not is_remote(url):
        st = os.stat(url)
        ident = {"path": str(Path(url).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    md5 = manifest_md5.get(Path(url).name)
    if md5:
        ident["md5"] = md5
    return ident


def store_key(inp: ResolvedInput, opts: DecodeOptions) -> tuple[str, bool]:
    """(key, cacheable): the store's name for this input; not cacheable for a remote shard with no
    md5 in its manifest (nothing says whether the object changed)."""
    rows = (inp.manifest or {}).get("shardlist", [])
    md5s = {Path(str(r.get("url", ""))).name: r.get("md5") for r in rows if isinstance(r, dict) and r.get("md5")}
    idents = [shard_identity(u, md5s) for u in inp.urls]
    names = (inp.manifest or {}).get("dcompress", {}).get("class_names") if isinstance(
        (inp.manifest or {}).get("dcompress"), dict) else None
    txt = classes_txt_for(inp)                     # read automatically: its content decides the labels
    txt_hash = hashlib.sha256(txt.read_bytes()).hexdigest() if txt is not None and txt.is_file() else None
    blob = json.dumps({"version": STORE_VERSION, "decode": opts.to_dict(), "class_names": names,
                       "classes_txt": txt_hash, "shards": idents, "jpeg_decoder": jpeg_decoder(),
                       "png_decoder": png_decoder()}, sort_keys=True).encode()
    cacheable = all("path" in i or "md5" in i for i in idents)
    return hashlib.sha256(blob).hexdigest()[:32], cacheable


# ------------------------------------------------------------------------------------ building

@dataclass
class _ShardJobs(torch.utils.data.Dataset):
    """One task per shard: decode it into `<tmp>/part-<i>.u8`; return its labels, keys, sums."""

    urls: list[str]
    tmp: Path
    opts: DecodeOptions
    max_bad: int
    counter: object = None          # multiprocessing.Value: samples decoded, for progress

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int) -> dict:
        try:
            return self._decode(i)
        except DcompressError as e:
            return {"error": {"type": type(e).__name__, "message": e.detail, "path": e.path, "key": e.key}}
        except OSError as e:
            err = os_error(e, self.tmp, "write the decoded store")
            return {"error": {"type": type(err).__name__, "message": err.detail, "path": err.path, "key": None}}

    def _decode(self, i: int) -> dict:
        url = self.urls[i]
        bad = BadSamples(max_bad=self.max_bad)
        labels, keys, seen = [], [], set()
        shape, first_key = None, None
        s1 = s2 = None
        chunk: list[np.ndarray] = []               # images since the last pixel-sum and progress update

        def flush() -> None:
            if not chunk:
                return
            add_pixel_sums(np.stack(chunk), s1, s2)
            if self.counter is not None:
                with self.counter.get_lock():
                    self.counter.value += len(chunk)
            chunk.clear()

        samples, complete = read_shard(url, bad)
        with open(self.tmp / f"part-{i:06d}.u8", "wb", buffering=4 * _MB) as f:
            for sample in samples:
                key = sample["__key__"]
                if key in seen:
                    raise InputDataError("duplicate key (also in this shard)", path=url, key=key)
                seen.add(key)
                try:
                    arr, label = decode_sample(sample, self.opts)
                except BadSample as e:
                    bad.add(f"{url}: key {key!r}: {e}")
                    continue
                if shape is None:
                    shape, first_key = arr.shape, key
                    s1 = np.zeros(arr.shape[0], dtype=np.int64)
                    s2 = np.zeros(arr.shape[0], dtype=np.int64)
                elif arr.shape != shape:
                    raise shape_mismatch(url, key, arr.shape, shape)
                f.write(arr.data)
                chunk.append(arr)
                labels.append(label)
                keys.append(key)
                if len(chunk) == 256:
                    flush()
        flush()
        problem = None if complete else tar_truncation(url)
        if problem:
            bad.add(f"{url}: {problem}")
        return {"n": len(keys), "shape": shape, "first_key": first_key, "labels": labels, "keys": keys,
                "s1": None if s1 is None else s1.tolist(), "s2": None if s2 is None else s2.tolist(),
                "bad": bad.as_dict()}


def add_pixel_sums(images: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> None:
    """Adds the per-channel pixel sums and sums of squares of uint8 `images` [B, C, H, W] to s1, s2
    (int64 [C], exact): one vectorised pass per chunk of images. Squares are taken in uint16
    (255^2 < 2^16) and accumulated in int64 by the reduction itself: no int64 copy of the chunk
    (in the decode worker that copy and its page faults cost 6x the sums)."""
    s1 += images.sum(axis=(0, 2, 3), dtype=np.int64)
    sq = images.astype(np.uint16)
    np.multiply(sq, sq, out=sq)
    s2 += sq.sum(axis=(0, 2, 3), dtype=np.int64)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _decoded_parts(jobs: _ShardJobs, workers: int):
    """Shard results in shard order, decoded by `workers` processes (in this one when 1)."""
    if workers <= 1:
        for i in range(len(jobs)):
            yield jobs[i]
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    loader = torch.utils.data.DataLoader(jobs, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=lambda r: r, multiprocessing_context=ctx, prefetch_factor=2)
    try:
        yield from loader
    except RuntimeError as e:                   # a worker died (killed, out of memory)
        raise DcompressError(f"a decode worker failed: {e}") from None


def _raise_error(err: dict) -> None:
    from .. import errors

    cls = getattr(errors, err["type"], DcompressError)
    raise cls(err["message"], path=err["path"], key=err["key"])


def build_store(inp: ResolvedInput, opts: DecodeOptions, folder: Path, *, max_bad: int, workers: int,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Decodes `inp` into `folder` (which must not exist; built in a temp folder beside it, then
    renamed); returns its meta. Raises InputDataError / TooManyBadSamples as the reader would."""
    import multiprocessing as mp

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    try:
        tmp.mkdir(parents=True)
        counter = mp.Value("q", 0)
        jobs = _ShardJobs(inp.urls, tmp, opts, max_bad, counter)
        meta = _assemble(inp, opts, tmp, jobs, _decoded_parts(jobs, min(workers, len(inp.urls))),
                         max_bad=max_bad, progress=progress, counter=counter)
        meta["build_s"] = round(time.time() - t0, 2)
        meta["workers"] = min(workers, len(inp.urls))
        write_json(tmp / "meta.json", meta, indent=1)
        crash_point("store.built")
        os.rename(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(e, folder, "write the decoded store") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _assemble(inp: ResolvedInput, opts: DecodeOptions, tmp: Path, jobs: _ShardJobs, parts, *, max_bad: int,
              progress, counter) -> dict:
    bad = BadSamples(max_bad=max_bad)
    expected = _expected_samples(inp)
    raw_labels: list = []
    keys: list[str] = []
    shard_of: list[int] = []
    shape = first = None
    s1 = s2 = None
    done = [0]
    stop = threading.Event()

    def poll() -> None:                                           # progress while workers decode
        while not stop.wait(0.5):
            if progress is not None and counter is not None:
                progress(counter.value, expected)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with open(tmp / "images.u8", "wb") as out:
            for i, res in enumerate(parts):
                url = inp.urls[i]
                if "error" in res:
                    _raise_error(res["error"])
                bad.merge(res["bad"]["count"], res["bad"]["examples"])
                part = tmp / f"part-{i:06d}.u8"
                if res["n"]:
                    if shape is None:
                        shape, first = tuple(res["shape"]), (url, res["first_key"])
                        s1, s2 = [0] * shape[0], [0] * shape[0]
                    elif tuple(res["shape"]) != shape:
                        raise shape_mismatch(url, res["first_key"], tuple(res["shape"]), shape)
                    with open(part, "rb") as src:
                        _copy(src, out)
                    s1 = [a + b for a, b in zip(s1, res["s1"])]
                    s2 = [a + b for a, b in zip(s2, res["s2"])]
                part.unlink()
                raw_labels += res["labels"]
                keys += res["keys"]
                shard_of += [i] * res["n"]
                done[0] += res["n"]
                if progress is not None:
                    progress(done[0], expected)
            out.flush()
            os.fsync(out.fileno())
    finally:
        stop.set()
        poller.join()
    if not keys:
        raise InputDataError(f"no usable samples in {len(inp.urls)} shard(s) ({inp.description})"
                             + (f"; {bad.count} bad, first: {bad.examples[0]}" if bad.count else ""))
    key_arr = np.array([k.encode() for k in keys])
    _check_unique(key_arr, np.array(shard_of), inp.urls)
    labels, class_names, class_source = assign_classes(raw_labels, keys, inp, opts)
    np.save(tmp / "labels.npy", labels.numpy(), allow_pickle=False)
    np.save(tmp / "keys.npy", key_arr, allow_pickle=False)
    del raw_labels
    n = len(keys)
    mean, std = stats_from_sums(s1, s2, n * shape[1] * shape[2])
    return {"version": STORE_VERSION, "shape": [n, *shape], "class_names": list(class_names),
            "mean": list(mean), "std": list(std),
            "fingerprint": fingerprint(keys, labels, _file_chunks(tmp / "images.u8")),
            "urls": [u if is_remote(u) else str(Path(u).resolve()) for u in inp.urls],
            "description": inp.description, "decode": opts.to_dict(), "class_source": class_source,
            "bad_samples": bad.as_dict(),
            "class_counts": torch.bincount(labels, minlength=len(class_names)).tolist(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _copy(src, dst) -> None:
    """Appends file `src` to file `dst` (in the kernel where it can)."""
    size = os.fstat(src.fileno()).st_size
    dst.flush()
    sent = 0
    try:
        while sent < size:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - sent)
            if n == 0:
                break
            sent += n
    except (AttributeError, OSError) as e:
        if getattr(e, "errno", None) not in (None, 18, 22, 38, 95):   # EXDEV, EINVAL, ENOSYS, EOPNOTSUPP
            raise
    if sent < size:
        src.seek(sent)
        dst.seek(0, os.SEEK_END)
        shutil.copyfileobj(src, dst, 16 * _MB)


def _check_unique(keys: np.ndarray, shard_of: np.ndarray, urls: list[str]) -> None:
    """InputDataError for the first (in stream order) key seen before in another shard."""
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if same.size == 0:
        return
    later = order[same + 1]
    j = int(later.min())
    earlier = int(order[same[np.argmin(later)]])
    raise InputDataError(f"duplicate key (also in {urls[shard_of[earlier]]})", path=urls[shard_of[j]],
                         key=keys[j].decode())


def stats_from_sums(s1, s2, count: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std (unbiased) in [0, 1] units from exact integer sums of x and x^2
    over `count` pixels per channel: the same numbers for any split into shards or workers."""
    mean, std = [], []
    for a, b in zip(s1, s2):
        m = a / count
        var = (b - a * a / count) / max(count - 1, 1)
        mean.append(round(m / 255.0, 6))
        std.append(round(max(var, 0.0) ** 0.5 / 255.0, 6))
    return tuple(mean), tuple(std)


def fingerprint(keys, labels: torch.Tensor, pixel_chunks) -> str:
    """sha256 over keys, labels and the pixel bytes (given in order, in chunks): names the
    decoded content, not the shard bytes. `reader.fingerprint_of` feeds it a tensor."""
    h = hashlib.sha256()
    h.update("\n".join(keys).encode())
    h.update(labels.numpy().tobytes())
    for chunk in pixel_chunks:
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _file_chunks(path: Path):
    """The file's bytes in 16 MiB reads (no mapping: mapped pages would count towards RSS)."""
    with open(path, "rb") as f:
        while chunk := f.read(16 * _MB):
            yield chunk


def _expected_samples(inp: ResolvedInput) -> int:
    """Samples the input's manifest announces for these shards (for progress), else 0 (unknown)."""
    rows = (inp.manifest or {}).get("shardlist", [])
    names = {Path(u).name for u in inp.urls}
    return sum(int(r.get("nsamples", 0) or 0) for r in rows
               if isinstance(r, dict) and Path(str(r.get("url", ""))).name in names)


# ------------------------------------------------------------------------------------ opening

def stores_dir(cache: Path) -> Path:
    return Path(cache) / STORES


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
        _lock_fd(fd, mode, note, path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_fd(fd: int, mode: int, note, path: Path, what: str = "using this decoded store") -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        if note is not None:
            note(f"waiting for another dcompress process {what} ({path})")
        fcntl.flock(fd, mode)


def _arrays(folder: Path) -> dict:
    return {"labels": np.load(folder / "labels.npy", allow_pickle=False),
            "keys": np.load(folder / "keys.npy", allow_pickle=False)}


def open_store(inp: ResolvedInput, opts: DecodeOptions, *, cache: Path, max_bad: int, workers: int | None = None,
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
    if meta["bad_samples"]["count"] > max_bad:
        if lock_fd is not None:
            os.close(lock_fd)
        ex = meta["bad_samples"]["examples"]
        raise TooManyBadSamples(f"{meta['bad_samples']['count']} bad samples exceed --max-bad {max_bad}"
                                + (f"; last: {ex[-1]}" if ex else ""))
    if lock_fd is None:
        store, arrays = mine, _arrays(folder)
    else:
        store, arrays = _open(folder, meta, lock_fd)
        _OPEN[key] = store
    return store, arrays, {"path": str(folder), "key": key, "reused": reused,
                           "build_s": None if reused else meta["build_s"], "workers": meta.get("workers")}


_OPEN: "weakref.WeakValueDictionary[str, DecodedStore]" = weakref.WeakValueDictionary()   # key -> open store


def _locked_build(inp, opts, folder: Path, lock_path: Path, root: Path, key: str, *, cache: Path, max_bad: int,
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
