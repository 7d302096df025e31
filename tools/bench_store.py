"""The decoded store at scale: decode throughput by workers, and peak RSS of commands on a large input.

    python tools/make_dataset.py -o /work/big/rgb32 --n 1000000 --unique 60000 --size 32
    python tools/bench_store.py decode /work/big/rgb32 --shards 6 --rounds 3     # walk vs 1 vs 2 workers
    python tools/bench_store.py decode /tmp/fm-train --shards 6 --label-key cls  # Fashion-MNIST's 28 px PNGs
    python tools/bench_store.py scale /work/big/rgb32 --json docs/bench/store-1m.json

`decode` interleaves, per round, three fresh processes on the same `--shards` shards: the raw tar
walk (webdataset's `tarfile_to_samples` yields every sample's bytes, nothing decoded: issue #15's
baseline), the store build with `--workers 1`, and with `--workers 2` (each into an empty cache),
and with `--before DIR` the 1-worker build of another checkout as a fourth; it prints samples/s
per cell and ratios of medians (this machine's speed drifts ~2x from minute to minute: only ratios
of interleaved runs mean anything).

`scale` runs the commands of issue #11 on the whole input, one after another, each as a child
process whose peak RSS is read from `wait4` (the largest resident set of the command's process
tree that it waited for: decode workers included): the store build (`distill --method random`,
first command on the input), `distill --method dm --set iterations=20`, `distill --method dq
--features FILE.npy` (embeddings made here from the store: 4x4 average-pooled pixels, 48 floats
per image) and a last `random` run to time the reopening of the store.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

WALK = """
import sys, time, webdataset as wds
t = time.perf_counter(); n = 0
for u in sys.argv[1:]:
    for s in wds.DataPipeline(wds.SimpleShardList([u]), wds.tarfile_to_samples()):
        n += 1
print(n, time.perf_counter() - t)
"""

BUILD = """
import sys, time
from dcompress.api import load_real
t = time.perf_counter()
r = load_real(sys.argv[3:], workers=int(sys.argv[1]), label_key=sys.argv[2])
print(len(r), time.perf_counter() - t)
"""


def run_child(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> tuple[int, float, int, str]:
    """(exit code, wall seconds, peak RSS in MiB of the process tree it waited for, stdout)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        text = out.read().decode()
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss // 1024, text


def decode(args) -> dict:
    shards = sorted(str(p) for p in Path(args.input).glob("*.tar"))[:args.shards]
    cells = {"tar walk": [], "store, 1 worker": [], "store, 2 workers": []}
    if args.before:
        cells["before: store, 1 worker"] = []
    for r in range(args.rounds):
        for name in cells:
            with tempfile.TemporaryDirectory(dir=args.tmp) as cache:
                if name == "tar walk":
                    cmd = [PY, "-c", WALK, *shards]
                else:
                    cmd = [PY, "-c", BUILD, "1" if "1 worker" in name else "2", args.label_key, *shards]
                cwd = args.before if name.startswith("before") else ROOT
                rc, wall, rss, text = run_child(cmd, {"DCOMPRESS_CACHE": cache}, cwd=cwd)
                if rc:
                    raise SystemExit(f"{name} failed ({rc})")
                n, secs = text.split()[-2:]
                cells[name].append(int(n) / float(secs))
                print(f"round {r}: {name}: {int(n) / float(secs):,.0f} samples/s (peak RSS {rss} MiB)", flush=True)
    med = {k: statistics.median(v) for k, v in cells.items()}
    out = {"input": args.input, "label_key": args.label_key, "shards": len(shards), "samples": int(n),
           "rounds": args.rounds, "samples_per_s": {k: [round(x) for x in v] for k, v in cells.items()},
           "median": {k: round(v) for k, v in med.items()},
           "ratio_2_workers_to_1": round(med["store, 2 workers"] / med["store, 1 worker"], 2),
           "ratio_walk_to_1_worker": round(med["tar walk"] / med["store, 1 worker"], 2)}
    if args.before:
        out["before"] = str(args.before)
        out["ratio_walk_to_1_worker_before"] = round(med["tar walk"] / med["before: store, 1 worker"], 2)
    return out


def make_features(cache: str, src: str, out: Path) -> None:
    code = f"""
import numpy as np, torch
from dcompress.api import load_real
r = load_real({src!r}, label_key="json:label")
f = np.lib.format.open_memmap({str(out)!r}, mode="w+", dtype=np.float32, shape=(len(r), 3 * 16))
for s in range(0, len(r), 8192):
    x = r.get_u8(torch.arange(s, min(s + 8192, len(r)))).float()
    f[s:s + x.shape[0]] = torch.nn.functional.adaptive_avg_pool2d(x, 4).reshape(x.shape[0], -1).numpy()
f.flush()
"""
    rc, wall, rss, _ = run_child([PY, "-c", code], {"DCOMPRESS_CACHE": cache})
    if rc:
        raise SystemExit(f"feature extraction failed ({rc})")
    print(f"features: {wall:.0f} s, peak RSS {rss} MiB", flush=True)


def scale(args) -> dict:
    cache = args.cache or tempfile.mkdtemp(dir=args.tmp, prefix="store-cache-")
    outs = Path(tempfile.mkdtemp(dir=args.tmp, prefix="store-outs-"))
    base = [PY, "-m", "dcompress.cli", "distill", args.input, "--label-key", "json:label", "--json",
            "--cache-dir", cache]
    feats = outs / "features.npy"
    steps = [("build store + random IPC 10 (hard labels)", ["--method", "random", "--ipc", "10", "--labels", "hard",
                                                             "--workers", str(args.workers)]),
             ("dm IPC 10, iterations=20", ["--method", "dm", "--ipc", "10", "--set", "iterations=20", "--labels",
                                          "hard"]),
             ("dq IPC 10, --features FILE.npy", ["--method", "dq", "--ipc", "10", "--features", str(feats),
                                                 "--labels", "hard"]),
             ("reopen: random IPC 10", ["--method", "random", "--ipc", "10", "--labels", "hard", "--seed", "1"])]
    rows = []
    for i, (name, extra) in enumerate(steps):
        if "dq" in name:
            make_features(cache, args.input, feats)
        rc, wall, rss, text = run_child([*base, *extra, "-o", str(outs / f"out{i}")])
        report = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
        row = {"command": name, "exit_code": rc, "wall_s": round(wall, 1), "peak_rss_mib": rss,
               "read_s": report.get("timings", {}).get("read_s"), "fit_s": report.get("timings", {}).get("fit_s"),
               "store_reused": (report.get("store") or {}).get("reused"), "error": report.get("error")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"input": args.input, "cache": cache, "steps": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decode")
    d.add_argument("input")
    d.add_argument("--shards", type=int, default=6)
    d.add_argument("--rounds", type=int, default=3)
    d.add_argument("--label-key", default="json:label", help="the input's label (cls for Fashion-MNIST shards)")
    d.add_argument("--before", type=Path, default=None,
                   help="a checkout of an older dcompress (e.g. `git worktree add DIR REV`): its 1-worker build "
                        "is interleaved as a fourth cell")
    s = sub.add_parser("scale")
    s.add_argument("input")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--cache", default=None, help="cache dir (default: a fresh temp dir)")
    for p in (d, s):
        p.add_argument("--tmp", default=None, help="where temp caches go (default: $TMPDIR)")
        p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    result = {"decode": decode, "scale": scale}[args.cmd](args)
    result["machine"] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
