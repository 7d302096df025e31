"""Start-up and small-command wall times of the real entry point (not a test; numbers for docs/).

    python tools/bench_cli.py /tmp/fm-train [--rounds 5] [--before DIR] [--json OUT.json]

Times, in fresh processes, `--version`, `--help`, `methods`, `verify`, `inspect`, `cache ls`
and a second `distill --method random --ipc 1` on the input (its decoded store and teacher
are built first, in the same cache, so the distill reuses both, as a user's second run does),
next to `python -c "import torch"` (the floor of every command that imports torch). Rounds
are interleaved (the machine's speed drifts); the table gives the median wall time, its
spread and the peak RSS of each command, and whether torch was imported. `--before DIR`
runs a second tree (e.g. a `git worktree` of an older commit) in the same rounds.
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


def timed(argv: list[str], env: dict) -> tuple[float, int, bool, int]:
    """(wall seconds, peak RSS in MB, torch imported, exit code) of one run."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    torch = any(line.rsplit("|", 1)[-1].strip() == "torch" for line in err.splitlines()
                if line.startswith("import time:"))
    return wall, int(usage.ru_maxrss / 1024), torch, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="training shards (a folder from `dcompress shard`)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", type=Path, help="another source tree to time in the same rounds")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    env = {**os.environ, "DCOMPRESS_CACHE": str(work / "cache")}
    trees = {"now": ROOT, **({"before": args.before.resolve()} if args.before else {})}

    def cmd(tree: Path, *a: str) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from dcompress.cli import main; sys.argv[0] = 'dcompress'; main()", str(tree), *a]

    setup = cmd(ROOT, "distill", args.input, "--method", "random", "--ipc", "1", "-o", str(work / "first"))
    subprocess.run(setup, env=env, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    out = work / "first"
    cases = {"import torch (floor)": lambda tree: [sys.executable, "-c", "import torch"],
             "--version": lambda tree: cmd(tree, "--version"), "--help": lambda tree: cmd(tree, "--help"),
             "methods": lambda tree: cmd(tree, "methods"), "verify": lambda tree: cmd(tree, "verify", str(out)),
             "inspect": lambda tree: cmd(tree, "inspect", str(out), "--grid", str(work / "g.png")),
             "cache ls": lambda tree: cmd(tree, "cache", "ls"),
             "distill random (2nd)": lambda tree: cmd(tree, "distill", args.input, "--method", "random", "--ipc",
                                                      "1", "-o", str(work / f"again-{tree.name}"), "--overwrite")}
    runs: dict[tuple[str, str], list[tuple[float, int, bool, int]]] = {}
    for r in range(args.rounds):
        for name, make in cases.items():
            for label, tree in trees.items():
                if name.startswith("import torch") and label != "now":
                    continue
                runs.setdefault((name, label), []).append(timed(make(tree), env))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for (name, label), rs in runs.items():
        walls = [w for w, *_ in rs]
        rows.append({"command": name, "tree": label, "median_s": round(statistics.median(walls), 3),
                     "min_s": round(min(walls), 3), "max_s": round(max(walls), 3),
                     "peak_rss_mb": max(m for _, m, _, _ in rs), "imports_torch": any(t for _, _, t, _ in rs),
                     "exit_codes": sorted({c for *_, c in rs})})
    print(f"{'command':24} {'tree':6} {'median s':>9} {'min–max s':>13} {'RSS MB':>7}  torch")
    for row in rows:
        print(f"{row['command']:24} {row['tree']:6} {row['median_s']:9.2f} "
              f"{row['min_s']:6.2f}–{row['max_s']:<6.2f} {row['peak_rss_mb']:7d}  {row['imports_torch']}")
    if args.json:
        args.json.write_text(json.dumps({"input": args.input, "rounds": args.rounds, "python": sys.version.split()[0],
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
