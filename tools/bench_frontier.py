"""The measured accuracy-vs-bytes frontier (issue 25): runs `dcompress frontier` with the
settings below, times the whole command, and copies its report (frontier.json/.csv/.png/.md)
into `--docs` with a `bench.json` beside it (command, wall time, machine, per-stage seconds).

    python tools/bench_frontier.py --train /tmp/fm-train --test /tmp/fm-test --report /tmp/fm-frontier \\
        --docs docs/bench/fmnist-frontier --cache-dir /tmp/dcache -- \\
        --methods random,herding,dq,dm,rded --budgets 0.05%,0.5%,2%,10% --labels hard,views \\
        --model convnet_w32 --epochs 30 --runs 2 --lr-grid 0.01,0.1 --val-per-class 20 --test-limit 2000 \\
        --set dm:iterations=30 --set dm:batch_real=32

Everything after `--` goes to `dcompress frontier` as typed. The frontier is resumable: killed
and rerun with the same arguments it keeps its finished points; `bench.json` then reports the
wall time of every attempt (`attempts`) and their sum.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("frontier.json", "frontier.csv", "frontier.png", "frontier.md")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--report", required=True, type=Path, help="the frontier's report folder (-o)")
    ap.add_argument("--docs", required=True, type=Path, help="where the report and bench.json are copied")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(own)
    exe = Path(sys.executable).with_name("dcompress")
    cmd = [str(exe) if exe.exists() else "dcompress", "frontier", args.train, "--test", args.test,
           "-o", str(args.report), "--json", *extra]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    args.docs.mkdir(parents=True, exist_ok=True)
    bench_path = args.docs / "bench.json"
    prior = json.loads(bench_path.read_text()) if bench_path.exists() else {}
    attempts = prior.get("attempts", []) if prior.get("command") == cmd[1:] else []
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.time() - t0
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    report = json.loads(last)
    attempts.append({"seconds": round(wall, 1), "exit_code": proc.returncode,
                     "points_run": (report.get("counters") or {}).get("points_run")})
    for name in FILES:
        src = args.report / name
        if src.exists():
            shutil.copyfile(src, args.docs / name)
    bench = {"command": cmd[1:], "attempts": attempts, "wall_seconds": round(sum(a["seconds"] for a in attempts), 1),
             "exit_code": proc.returncode, "status": report.get("status"),
             "stage_seconds": report.get("seconds"), "counters": report.get("counters"),
             "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
             "date": time.strftime("%Y-%m-%d")}
    bench_path.write_text(json.dumps(bench, indent=1) + "\n")
    print(json.dumps({k: bench[k] for k in ("wall_seconds", "exit_code", "status", "stage_seconds")}))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
