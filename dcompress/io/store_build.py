"""Building a decoded store: an input's shards decoded by parallel workers, joined in shard order.

One task per shard (`_ShardJobs`; `workers` processes through a `torch.utils.data.DataLoader`
over the shard list, or this process alone with one worker): read its samples
(`stream.read_shard`), decode each (`decode.decode_sample`), append the pixels to a part file and
add the pixel sums (`stats.add_pixel_sums`). `_assemble` joins the parts in shard order (the same
store for any number of workers), checks that keys are unique across shards, maps the raw labels
to classes (`labels.assign_classes`) and writes labels, keys and statistics. `build_store` does
it all in `<folder>.tmp-<pid>/` and renames that into place after `meta.json`: a killed build
leaves only the temp folder. The files and the key: `store`'s docstring.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DcompressError, InputDataError, os_error
from ..faults import crash_point
from .decode import DecodeOptions, decode_sample, shape_mismatch
from .labels import assign_classes
from .safe_write import write_json
from .stats import add_pixel_sums, fingerprint, stats_from_sums
from .stream import BadSample, BadSamples, read_shard, tar_truncation
from .urls import ResolvedInput, is_remote

STORE_VERSION = 1
_MB = 1 << 20


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
        meta = _assemble(inp, opts, tmp, _decoded_parts(jobs, min(workers, len(inp.urls))),
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


def _assemble(inp: ResolvedInput, opts: DecodeOptions, tmp: Path, parts, *, max_bad: int, progress,
              counter) -> dict:
    bad = BadSamples(max_bad=max_bad)
    expected = _expected_samples(inp)
    raw_labels: list = []
    keys: list[str] = []
    shard_of: list[int] = []
    shape = None
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
                        shape = tuple(res["shape"])
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
