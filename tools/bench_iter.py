"""Per-iteration time of DM, DC and DSA on real Fashion-MNIST (CPU), next to the FLOP floor.

    python tools/bench_iter.py                       # ~5-10 min on 2 cores
    python tools/bench_iter.py --variants dm,dc --rounds 3 --steps 3 --json iter.json

Each variant runs the real method (`Method.fit`) for `warmup + steps` iterations; iteration
times are the gaps between its progress callbacks (so they include the fresh network, the real
batch sampling and the DSA draws). Variants are interleaved (ABAB...) for `--rounds` rounds
because this VM's speed drifts ~2x from minute to minute (performance.md §B5); the table gives
the median over all timed iterations, the ratio of medians, and achieved GFLOP/s = floor /
median. Steal time (`vmstat` st column) and load average are logged before and after.

FLOP floors (performance.md §B1/§B5, ConvNet-3 forward 0.097 GFLOP per 28x28 image, backward
2x, double backward 5x): DM IPC 10 batch_real 256 = 277 GF/it; DC/DSA IPC 1 batch_real 64 =
0.19 TF/it (one outer step, no inner loop at IPC 1).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


@dataclass(frozen=True)
class Variant:
    method: str
    ipc: int
    config: dict = field(default_factory=dict)
    floor_gf: float = 0.0      # analytic FLOP floor per iteration (GFLOP)
    note: str = ""


VARIANTS = {
    "dm": Variant("dm", 10, {"batch_real": 256, "batched": False}, 277.0, "IPC 10, batch_real 256, per-class, DSA"),
    "dm_batched": Variant("dm", 10, {"batch_real": 256, "batched": True}, 277.0, "IPC 10, batch_real 256, batched, DSA"),
    "dc": Variant("dc", 1, {"batch_real": 64}, 190.0, "IPC 1, batch_real 64, 'ours'"),
    "dsa": Variant("dsa", 1, {"batch_real": 64}, 190.0, "IPC 1, batch_real 64, 'ours', Siamese DSA"),
}


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


def ensure_shards(path: Path) -> Path:
    if not (path / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "dcompress.cli", "shard", "/usr/share/datasets/fashion-mnist", str(path),
                        "--format", "idx", "--split", "train", "--json"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return path


def time_variant(v: Variant, real, steps: int, warmup: int, seed: int) -> list[float]:
    """Seconds of each timed iteration of one `fit` run."""
    from dcompress.config import resolve_config
    from dcompress.registry import get_method
    from dcompress.core import RunSpec

    cls = get_method(v.method)
    cfg = resolve_config(cls.Config, base={**v.config, "iterations": warmup + steps})
    stamps: list[float] = []
    spec = RunSpec(ipc=v.ipc, progress=lambda done, total, desc: stamps.append(time.perf_counter()))
    t0 = time.perf_counter()
    cls(cfg).fit(real, spec, generator=torch.Generator().manual_seed(seed), log=lambda e: None)
    gaps = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    return gaps[warmup:]


def summarise(names: list[str], times: dict[str, list[float]], args, before: dict, after: dict, rounds: int,
              wall: float) -> dict:
    """Markdown table (medians, min, floor, GFLOP/s, ratios of medians) and the environment line."""
    med = {n: statistics.median(times[n]) for n in names}
    ref = names[0]
    lines = [f"| variant | setting | median s/it | min s/it | iterations timed | FLOP floor (GF/it) | "
             f"achieved GFLOP/s | ratio of medians vs {ref} |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        v = VARIANTS[n]
        lines.append(f"| {n} | {v.note} | {med[n]:.2f} | {min(times[n]):.2f} | {len(times[n])} | {v.floor_gf:.0f} "
                     f"| {v.floor_gf / med[n]:.1f} | {med[n] / med[ref]:.2f} |")
    extra = []
    if "dsa" in med and "dc" in med:
        extra.append(f"DSA augmentation overhead (dsa/dc, ratio of medians): {med['dsa'] / med['dc']:.3f}")
    if "dm_batched" in med and "dm" in med:
        extra.append(f"DM batched/per-class (ratio of medians): {med['dm_batched'] / med['dm']:.3f}")
    env = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
           f"{rounds} interleaved rounds x {args.steps} timed iterations (+{args.warmup} warm-up) per variant; "
           f"wall {wall:.0f} s; before: steal {before['st']}%, load {before['loadavg']}; "
           f"after: steal {after['st']}%, load {after['loadavg']}")
    return {"median": med, "before": before, "after": after, "rounds": rounds, "env": env,
            "table": "\n".join(lines + [""] + extra + ["", env])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="dm,dm_batched,dc,dsa", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed iterations per variant per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first iterations per run")
    ap.add_argument("--train", type=Path, default=Path("/tmp/fm-train"))
    ap.add_argument("--json", type=Path, default=None, help="write the raw timings here (after every round)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    from dcompress.api import load_real

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.variants.split(",") if n]
    real = load_real(str(ensure_shards(args.train)))
    before = vmstat()
    times: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.time()
    for r in range(args.rounds):
        for n in names:               # interleaved: A B C D, A B C D, ...
            times[n] += time_variant(VARIANTS[n], real, args.steps, args.warmup, seed=r)
            print(f"[bench_iter] round {r + 1} {n}: {', '.join(f'{t:.2f}' for t in times[n][-args.steps:])} s",
                  file=sys.stderr, flush=True)
        # a report after every round, so a run cut short still leaves its complete rounds
        report = summarise(names, times, args, before, vmstat(), r + 1, time.time() - t_start)
        if args.json:
            args.json.write_text(json.dumps({**report, "times": times,
                                             "variants": {n: VARIANTS[n].__dict__ for n in names}}, indent=1))
    print(report["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
