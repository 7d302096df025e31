"""Per-iteration cost of DM, DC and DSA on real Fashion-MNIST (CPU), before/after, next to the FLOP floor.

    python tools/bench_iter.py --variants dm,dm_ipc1 --impls before,after --threads 1   # DM, ~6 min
    python tools/bench_iter.py --variants dc,dsa --impls before,after --threads 1 --steps 1
    python tools/bench_iter.py decode                                  # shard reading: tar walk vs decoders

Every measurement cell (one variant x one implementation) is a fresh worker process that runs
the real method (`Method.fit`) for `warmup + steps` iterations on the cached real data; the
iteration figures are the gaps between its progress callbacks (fresh network, real-batch
sampling and DSA draws included). Fresh processes are needed because the allocator settings
are process-wide. Per iteration the worker records wall time, CPU time (user + system, from
getrusage, all threads), minor page faults, and afterwards the peak RSS and this machine's
sgemm rate (2048^3, median of 3) in the same window. Cells are interleaved (for each round,
for each variant: impl A, impl B, ...) because this VM's speed drifts ~2x from minute to
minute; tables give medians over all timed iterations and ratios of medians against the
first implementation. Steal time and load average are logged before and after.

Implementations (`--impls`):
    before          dcompress at --before-rev (default 3e75074, before the CPU work), glibc defaults
    after           this tree, `dcompress.alloc.tune_malloc()` (the CLI's default)
    after_notune    this tree, DCOMPRESS_MALLOC_TUNE=0 (in-place ReLU only)
    after_thp       this tree, no tuning, THP_MEM_ALLOC_ENABLE=1 (torch's 2 MiB-aligned huge pages)
    after_jemalloc  this tree under LD_PRELOAD=libjemalloc, MALLOC_CONF never purging (when installed)
    after_tcmalloc  this tree under LD_PRELOAD=libtcmalloc_minimal (when installed)

FLOP floors (performance.md §B1/§B5, ConvNet-3 forward 0.097 GFLOP per 28x28 image, backward
2x, double backward 5x): DM IPC 10 / IPC 1 at batch_real 256 = 277 / 251 GF per iteration;
DC/DSA IPC 1 (one outer step, no inner loop) = 750 GF at batch_real 256, 190 GF at 64.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REV = "3e75074"


@dataclass(frozen=True)
class Variant:
    method: str
    ipc: int
    config: dict = field(default_factory=dict)
    floor_gf: float = 0.0      # analytic FLOP floor per iteration (GFLOP)
    note: str = ""


VARIANTS = {
    "dm": Variant("dm", 10, {"batch_real": 256, "batched": False}, 277.0, "DM IPC 10, batch_real 256, per-class, DSA"),
    "dm_ipc1": Variant("dm", 1, {"batch_real": 256, "batched": False}, 251.0, "DM IPC 1, batch_real 256, per-class, DSA"),
    "dm_batched": Variant("dm", 10, {"batch_real": 256, "batched": True}, 277.0, "DM IPC 10, batch_real 256, batched, DSA"),
    "dc": Variant("dc", 1, {"batch_real": 256}, 750.0, "DC IPC 1, batch_real 256, 'ours'"),
    "dsa": Variant("dsa", 1, {"batch_real": 256}, 750.0, "DSA IPC 1, batch_real 256, 'ours', Siamese DSA"),
    "dc64": Variant("dc", 1, {"batch_real": 64}, 190.0, "DC IPC 1, batch_real 64, 'ours'"),
    "dsa64": Variant("dsa", 1, {"batch_real": 64}, 190.0, "DSA IPC 1, batch_real 64, 'ours', Siamese DSA"),
}


def _preload(name: str) -> str | None:
    hits = sorted(glob.glob(f"/usr/lib/*/lib{name}.so*") + glob.glob(f"/usr/lib/lib{name}.so*"))
    return hits[0] if hits else None


def impl_setup(impl: str, before_root: Path) -> tuple[Path, dict] | None:
    """(code root, extra environment) of an implementation; None when it cannot run here."""
    off = {"DCOMPRESS_MALLOC_TUNE": "0"}
    if impl == "before":
        return before_root, off
    if impl == "after":
        return ROOT, {"DCOMPRESS_MALLOC_TUNE": "1"}
    if impl == "after_notune":
        return ROOT, off
    if impl == "after_thp":
        return ROOT, {**off, "THP_MEM_ALLOC_ENABLE": "1"}
    if impl in ("after_jemalloc", "after_tcmalloc"):
        lib = _preload("jemalloc" if impl == "after_jemalloc" else "tcmalloc_minimal")
        # configured to cache, like tune_malloc: jemalloc's default purges freed pages after
        # 10 s and faults them in again (1.5M faults per DM iteration measured here)
        conf = {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"} if impl == "after_jemalloc" else {}
        return (ROOT, {"LD_PRELOAD": lib, **conf}) if lib else None
    raise SystemExit(f"unknown implementation {impl!r}")


def vmstat() -> dict:
    """Steal (%) and load average right now (`vmstat 1 2`, second sample)."""
    try:
        out = subprocess.run(["vmstat", "1", "2"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        head, last = out[1].split(), out[-1].split()
        row = dict(zip(head, last))
        return {"st": int(row.get("st", -1)), "us": int(row.get("us", -1)), "id": int(row.get("id", -1)),
                "loadavg": [round(x, 2) for x in os.getloadavg()]}
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return {"st": None, "loadavg": [round(x, 2) for x in os.getloadavg()]}


# ---------------------------------------------------------------------------------------------- data

def ensure_shards(path: Path) -> Path:
    if not (path / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "dcompress.cli", "shard", "/usr/share/datasets/fashion-mnist", str(path),
                        "--format", "idx", "--split", "train", "--json"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return path


def ensure_cache(train: Path) -> Path:
    """The decoded RealData of `train`, saved once as plain tensors (workers load it in ~1 s)."""
    cache = train / "realdata.bench.pt"
    if not cache.exists():
        sys.path.insert(0, str(ROOT))
        import torch
        from dcompress.api import load_real

        real = load_real(str(ensure_shards(train)))
        torch.save({"images": real.get_u8(torch.arange(len(real))), "labels": real.labels, "keys": real.keys, "class_names": real.class_names,
                    "mean": real.mean, "std": real.std, "source": real.source}, cache)
    return cache


# ---------------------------------------------------------------------------------------------- worker

def sgemm_rate(n: int = 2048, repeats: int = 3) -> float:
    """Median GFLOP/s of an n^3 float32 matmul (this process, its thread setting)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def worker(job: dict) -> dict:
    """Runs one cell in this (fresh) process; returns its per-iteration figures."""
    sys.path.insert(0, job["root"])
    tuning = None
    if os.environ.get("DCOMPRESS_MALLOC_TUNE") == "1":
        from dcompress.alloc import tune_malloc    # before torch allocates anything

        tuning = tune_malloc().reason
    import torch

    from dcompress.config import resolve_config
    from dcompress.registry import get_method
    from dcompress.core import RealData, RunSpec, TensorStore

    torch.set_num_threads(job["threads"])
    saved = torch.load(job["cache"])
    real = RealData(store=TensorStore(saved.pop("images")), **saved)
    v = VARIANTS[job["variant"]]
    cls = get_method(v.method)
    cfg = resolve_config(cls.Config, base={**v.config, "iterations": job["warmup"] + job["steps"]})

    def mark() -> tuple[float, float, float, int]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt

    marks = [mark()]
    spec = RunSpec(ipc=v.ipc, seed=job["seed"], progress=lambda done, total, desc: marks.append(mark()))
    cls(cfg).fit(real, spec, log=lambda e: None)
    its = [{"wall": b[0] - a[0], "user": b[1] - a[1], "sys": b[2] - a[2], "faults": b[3] - a[3]}
           for a, b in zip(marks[:-1], marks[1:])]
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"iterations": its[job["warmup"]:], "warmup": its[:job["warmup"]], "maxrss_mb": maxrss_mb,
            "sgemm_gflops": sgemm_rate(), "threads": torch.get_num_threads(), "tuning": tuning,
            "loadavg": os.getloadavg()[0]}


def run_cell(variant: str, impl: str, args, before_root: Path, cache: Path, seed: int) -> dict | None:
    setup = impl_setup(impl, before_root)
    if setup is None:
        return None
    root, extra = setup
    job = {"variant": variant, "root": str(root), "cache": str(cache), "threads": args.threads,
           "steps": args.steps, "warmup": args.warmup, "seed": seed}
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "THP_MEM_ALLOC_ENABLE", "MALLOC_CONF")}
    env.update(extra)
    env["PYTHONPATH"] = str(root)
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env, check=True,
                         capture_output=True, text=True, cwd=root).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report

def summarise(cells: dict, names: list[str], impls: list[str], env: str) -> str:
    med = statistics.median
    rows = ["| variant | impl | wall s/it | CPU s/it (user + sys) | wall / CPU | minor faults/it | peak RSS MB "
            "| floor GF/it | GFLOP/s (wall) | sgemm GFLOP/s | % of sgemm | n | wall ratio vs " + impls[0] + " |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        v, base = VARIANTS[n], None
        for impl in impls:
            runs = cells.get((n, impl), [])
            its = [it for r in runs for it in r["iterations"]]
            if not its:
                continue
            wall, user, sys_ = med([i["wall"] for i in its]), med([i["user"] for i in its]), med([i["sys"] for i in its])
            cpu = med([i["user"] + i["sys"] for i in its])
            faults = med([i["faults"] for i in its])
            sgemm = med([r["sgemm_gflops"] for r in runs])
            rss = max(r["maxrss_mb"] for r in runs)
            base = wall if base is None else base
            rate = v.floor_gf / wall
            rows.append(f"| {n} | {impl} | {wall:.2f} | {cpu:.2f} ({user:.2f} + {sys_:.2f}) | {wall / cpu:.2f} "
                        f"| {faults:,.0f} | {rss:,.0f} | {v.floor_gf:.0f} | {rate:.1f} | {sgemm:.1f} "
                        f"| {100 * rate / sgemm:.0f} | {len(its)} | {wall / base:.2f} |")
    return "\n".join(rows + ["", env])


def bench(args) -> int:
    names = [n for n in args.variants.split(",") if n]
    impls = [i for i in args.impls.split(",") if i]
    for n in names:
        if n not in VARIANTS:
            raise SystemExit(f"unknown variant {n!r}; known: {', '.join(VARIANTS)}")
    before_root = args.before or Path(f"/tmp/dcompress-before-{args.before_rev}")
    if "before" in impls and not (before_root / "dcompress").is_dir():
        before_root.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", args.before_rev, "dcompress"], check=True,
                             capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before_root)], input=tar, check=True)
    cache = ensure_cache(args.train)
    before = vmstat()
    cells: dict = {}
    t_start = time.time()
    for r in range(args.rounds):
        for n in names:
            for impl in impls:            # interleaved: A B A B ...
                res = run_cell(n, impl, args, before_root, cache, seed=r)
                if res is None:
                    print(f"[bench_iter] {impl}: not available here, skipped", file=sys.stderr)
                    continue
                cells.setdefault((n, impl), []).append(res)
                print(f"[bench_iter] round {r + 1} {n} {impl}: "
                      + ", ".join(f"{i['wall']:.2f} s ({i['user'] + i['sys']:.2f} cpu, {i['faults']} flt)"
                                  for i in res["iterations"]) + f"; sgemm {res['sgemm_gflops']:.0f} GFLOP/s",
                      file=sys.stderr, flush=True)
        after = vmstat()
        env = (f"{args.threads} torch thread(s), {os.cpu_count()} CPUs; {r + 1} interleaved round(s) x {args.steps} "
               f"timed iteration(s) (+{args.warmup} warm-up) per cell; wall {time.time() - t_start:.0f} s; before: "
               f"steal {before['st']}%, load {before['loadavg']}; after: steal {after['st']}%, load {after['loadavg']}")
        table = summarise(cells, names, impls, env)
        if args.json:    # after every round, so a run cut short keeps its complete rounds
            args.json.write_text(json.dumps({"table": table, "cells": {f"{k[0]}/{k[1]}": v for k, v in cells.items()},
                                             "variants": {n: VARIANTS[n].__dict__ for n in names}}, indent=1))
    print(table)
    return 0


# ---------------------------------------------------------------------------------------------- decode

def bench_decode(args) -> int:
    """Samples/s of one reader process, by component, interleaved: webdataset's raw tar walk (the
    issue's baseline), dcompress's shard reader (`read_shard`: the header scan where it applies),
    each PNG decoder alone on bytes in memory, the reader plus decode_image, and the decode
    worker's whole unit of work (`store_build._ShardJobs`: read, decode, checks, write, pixel sums).
    `tools/bench_store.py decode` measures the same build end to end in fresh processes.
    """
    sys.path.insert(0, str(ROOT))
    import tempfile

    import numpy as np
    import torch
    import webdataset as wds

    from dcompress.io import codecs
    from dcompress.io.decode import DecodeOptions
    from dcompress.io.store_build import _ShardJobs
    from dcompress.io.stream import BadSamples, read_shard

    torch.set_num_threads(1)
    shards = sorted(str(p) for p in ensure_shards(args.train).glob("*.tar"))[:args.shards]

    def walk():
        return wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples())

    def reader():
        for u in shards:
            yield from read_shard(u, BadSamples(max_bad=10 ** 9))[0]

    def pillow(data: bytes) -> np.ndarray:
        return codecs.decode_image(data, "png", fast=False)

    decoders = {"Pillow": pillow, "decode_image (pyspng + checks)": lambda b: codecs.decode_image(b, "png")}
    pngs = [s["png"] for _, s in zip(range(2000), walk())]
    for name, fn in decoders.items():   # same pixels from every decoder
        if not all(np.array_equal(fn(b), pillow(b)) for b in pngs[:500]):
            raise SystemExit(f"{name} decodes differently from Pillow")

    def store_worker() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            jobs = _ShardJobs(shards, Path(tmp), DecodeOptions(label_key=args.label_key), max_bad=10 ** 9)
            return sum(jobs[i]["n"] for i in range(len(shards)))

    times: dict[str, list[float]] = {}

    def timed(name: str, fn) -> None:
        t = time.perf_counter()
        n = fn()
        times.setdefault(name, []).append(n / (time.perf_counter() - t))

    for _ in range(args.rounds):      # interleaved
        timed("raw tar walk (webdataset)", lambda: sum(1 for _ in walk()))
        timed("dcompress reader (read_shard)", lambda: sum(1 for _ in reader()))
        timed("dcompress reader + decode_image", lambda: sum(codecs.decode_image(s["png"], "png") is not None
                                                            for s in reader()))
        timed("store worker (read, decode, checks, write, sums)", store_worker)
        for name, fn in decoders.items():
            timed(f"{name} alone (in-memory bytes)", lambda: sum(fn(b) is not None for b in pngs))
    walk_rate = statistics.median(times["raw tar walk (webdataset)"])
    rows = ["| component (1 process, 1 thread) | samples/s per round | median | time vs raw tar walk |",
            "|---|---|---|---|"]
    for name, rates in times.items():
        rate = statistics.median(rates)
        rows.append(f"| {name} | {', '.join(f'{r:,.0f}' for r in rates)} | {rate:,.0f} | {walk_rate / rate:.2f} |")
    print("\n".join(rows + ["", f"{len(shards)} shard(s) of {args.train}; load {os.getloadavg()}"]))
    if args.json:
        args.json.write_text(json.dumps({"samples_per_s": times, "shards": shards,
                                         "load": os.getloadavg()}, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print(json.dumps(worker(json.loads(argv[1]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="iter", choices=["iter", "decode"])
    ap.add_argument("--variants", default="dm,dm_ipc1,dc,dsa", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--impls", default="before,after", help="comma list (module doc); ratios are against the first")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed iterations per cell")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first iterations per cell")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = the issue's comparison)")
    ap.add_argument("--train", type=Path, default=Path("/tmp/fm-train"))
    ap.add_argument("--before", type=Path, default=None, help="a folder holding the 'before' dcompress/ package")
    ap.add_argument("--before-rev", default=BEFORE_REV, help="git revision extracted when --before is absent")
    ap.add_argument("--shards", type=int, default=1, help="decode: shards read per pass (10k samples each)")
    ap.add_argument("--label-key", default="cls", help="decode: the shards' label (the store worker parses it)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw figures here (after every round)")
    args = ap.parse_args(argv)
    return bench_decode(args) if args.what == "decode" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
