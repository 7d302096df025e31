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

import dataclasses
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DcompressError, InputDataError, UsageError, os_error, unreadable
from ..faults import crash_point
from .decode import DecodeOptions, decode_sample, shape_mismatch
from .labels import assign_classes
from .safe_write import write_json
from .stats import add_pixel_sums, fingerprint, stats_from_sums
from .manifest import md5_file
from .stream import BadSample, BadSamples, bad_limit, read_shard, tar_truncation
from .urls import ResolvedInput, is_remote

STORE_VERSION = 2          # 2: meta.json holds the input accounting (`input`, bad-sample causes)
_MB = 1 << 20


@dataclass
class _ShardJobs(torch.utils.data.Dataset):
    """One task per shard: decode it into `<tmp>/part-<i>.u8`; return its labels, keys, sums."""

    urls: list[str]
    tmp: Path
    opts: DecodeOptions
    max_bad: int | None
    counter: object = None          # multiprocessing.Value: samples decoded, for progress
    rows: dict = dataclasses.field(default_factory=dict)   # input manifest rows by shard name

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
        bad = BadSamples(max_bad=bad_limit(self.max_bad))
        stream = BadSamples(max_bad=bad_limit(self.max_bad))   # unreadable data: part of a damage, if any
        unlabelled = _Unlabelled(url, bad, self.opts.label_key)
        labels, keys, seen = [], [], set()
        shape, first_key = None, None
        s1 = s2 = None
        read = 0
        chunk: list[np.ndarray] = []               # images since the last pixel-sum and progress update

        def flush() -> None:
            if not chunk:
                return
            add_pixel_sums(np.stack(chunk), s1, s2)
            if self.counter is not None:
                with self.counter.get_lock():
                    self.counter.value += len(chunk)
            chunk.clear()

        samples, complete = read_shard(url, bad, stream)
        with open(self.tmp / f"part-{i:06d}.u8", "wb", buffering=4 * _MB) as f:
            for sample in samples:
                read += 1
                key = sample["__key__"]
                if key in seen:
                    raise InputDataError("duplicate key (also in this shard)", path=url, key=key)
                seen.add(key)
                try:
                    arr, label = decode_sample(sample, self.opts)
                except BadSample as e:
                    unlabelled.add(f"{url}: key {key!r}: {e}", e.cause)
                    continue
                unlabelled.labelled()
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
        row = self.rows.get(Path(url).name)
        damage = shard_damage(url, row, read, complete)
        if damage is None:
            bad.merge(stream.count, stream.examples, stream.causes)
        unlabelled.end(damaged=damage is not None)
        expected = row.get("nsamples") if row else None
        return {"n": len(keys), "shape": shape, "first_key": first_key, "labels": labels, "keys": keys,
                "s1": None if s1 is None else s1.tolist(), "s2": None if s2 is None else s2.tolist(),
                "bad": bad.as_dict(), "read": read, "expected": read if expected is None else expected,
                "damage": damage}


class _Unlabelled:
    """Samples of one shard without their label member or field (`BadSample.cause` label_key).

    Held back until a sample of the shard has its label (then they are bad samples like any
    other); when no sample of a complete shard has it, the label is looked for in the wrong
    place: a UsageError (exit 2) naming the shard with the hint, not hundreds of bad samples."""

    def __init__(self, url: str, bad: BadSamples, label_key: str):
        self.url, self.bad, self.label_key = url, bad, label_key
        self.held: list[str] = []
        self.count, self.seen_label = 0, False

    def add(self, message: str, cause: str) -> None:
        if cause != "label_key" or self.seen_label:
            if cause == "label":
                self.labelled()
            self.bad.add(message, cause)
            return
        self.count += 1
        if len(self.held) < 20:
            self.held.append(message)
        if self.count > self.bad.max_bad:             # no labelled sample in sight: say so now
            self._refuse()

    def labelled(self) -> None:
        if not self.seen_label:
            self.seen_label = True
            self._release()

    def end(self, *, damaged: bool) -> None:
        if self.count and not self.seen_label and not damaged:
            self._refuse()
        self._release()

    def _release(self) -> None:
        for message in self.held:
            self.bad.add(message, "label_key")
        if self.count > len(self.held):
            self.bad.add(self.held[-1], "label_key", self.count - len(self.held))
        self.held, self.count = [], 0

    def _refuse(self) -> None:
        _, key, why = self.held[0].split(": ", 2)
        raise UsageError(f"none of the {self.count} samples read has a label where --label-key {self.label_key} "
                         f"looks ({key}: {why})", path=self.url)


def shard_damage(url: str, row: dict | None, read: int, complete: bool) -> dict | None:
    """Why a shard is damaged, or None: it ends early (`tar_truncation`), or disagrees with its
    input-manifest row (`filesize`, `md5sum`, `nsamples`). {url, problem, expected (the row's
    nsamples or None), read, lost (samples counted against --max-bad when the damage is skipped:
    expected - read, at least 1)}."""
    problems = []
    cut = None if complete else tar_truncation(url)
    if cut:
        problems.append(cut)
    expected = row.get("nsamples") if row else None
    if row and not is_remote(url):
        try:
            size = os.stat(url).st_size
            if row.get("filesize") is not None and size != row["filesize"]:
                problems.append(f"it is {size} bytes, the input manifest lists {row['filesize']}")
            elif row.get("md5sum") and not cut and md5_file(url) != row["md5sum"]:
                problems.append("its md5 differs from the input manifest's md5sum")
        except OSError as e:
            raise unreadable(e, url, "shard") from None
    if expected is not None and read != expected:
        problems.append(f"read {read} of the {expected} samples the input manifest lists")
    if not problems:
        return None
    return {"url": url, "problem": "; ".join(problems), "expected": expected, "read": read,
            "lost": max(1, (expected or 0) - read)}


def damage_error(damaged: list[dict]) -> InputDataError:
    """The error for damaged shards when the user did not opt into skipping them (exit 4)."""
    d = damaged[0]
    more = f" ({len(damaged) - 1} more damaged shard(s))" if len(damaged) > 1 else ""
    return InputDataError(f"damaged shard: {d['problem']}{more}; to skip the damage and use what the shard holds, "
                          "pass --max-bad N (each lost sample counts as a bad sample)", path=d["url"])


def manifest_rows(inp: ResolvedInput) -> dict[str, dict]:
    """The input manifest's shard rows by shard file name (how rows and urls are matched)."""
    rows = (inp.manifest or {}).get("shardlist", [])
    return {Path(str(r.get("url", ""))).name: r for r in rows if isinstance(r, dict)}


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


def build_store(inp: ResolvedInput, opts: DecodeOptions, folder: Path, *, max_bad: int | None, workers: int,
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
        jobs = _ShardJobs(inp.urls, tmp, opts, max_bad, counter, manifest_rows(inp))
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


def _assemble(inp: ResolvedInput, opts: DecodeOptions, tmp: Path, parts, *, max_bad: int | None, progress,
              counter) -> dict:
    bad = BadSamples(max_bad=bad_limit(max_bad))
    damaged: list[dict] = []
    read = expected_total = 0
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
                bad.merge(res["bad"]["count"], res["bad"]["examples"], res["bad"]["causes"])
                read += res["read"]
                expected_total += res["expected"]
                if res["damage"] is not None:
                    damaged.append(res["damage"])
                    if max_bad is None:
                        raise damage_error(damaged)
                    bad.add(f"{url}: damaged shard: {res['damage']['problem']}", "damaged_shard", res["damage"]["lost"])
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
            "input": {"shards": len(inp.urls), "samples_expected": expected_total, "samples_read": read,
                      "samples_used": n, "damaged_shards": damaged},
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
    rows = manifest_rows(inp)
    return sum(int((rows.get(Path(u).name) or {}).get("nsamples", 0) or 0) for u in inp.urls)
