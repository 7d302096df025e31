"""A Tiny-ImageNet-shaped run on this CPU: 100k images, 200 classes, 64x64 RGB, through DM and DQ,
evaluated with the depth-4 ConvNet (chosen from the 64-px input) against random subsets.

    python tools/make_dataset.py -o /work/big/tiny200 --n 100000 --unique 50000 --size 64 --classes 200
    python tools/make_dataset.py -o /work/big/tiny200-test --n 10000 --size 64 --classes 200 --split test
    python tools/bench_tiny.py /work/big/tiny200 /work/big/tiny200-test --json docs/bench/tiny-imagenet-shaped.json

A short budget (`--iterations`, `--batch-real`, `--epochs`): the point is that an input of this
shape runs end to end here (decoded store, 200 classes, auto depth-4 network, per-class DQ bins)
and what it costs; the accuracies are a pipeline check, not the papers' figures. DQ reads
embeddings made here from the store (4x4 average-pooled pixels) so that no teacher training
(minutes per epoch at 64 px on 2 cores) enters the budget; `--features teacher` works too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import make_features, run_child  # noqa: E402

PY = sys.executable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="tiny-"))
    cache = str(work / "cache")
    env = {"DCOMPRESS_CACHE": cache}
    common = ["--label-key", "json:label", "--labels", "hard", "--json", "--ipc", str(a.ipc)]
    rows = []

    def step(name: str, cmd: list[str]) -> dict:
        t = time.time()
        rc, wall, rss, text = run_child([PY, "-m", "dcompress.cli", *cmd], env)
        report = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
        row = {"step": name, "exit_code": rc, "wall_s": round(wall, 1), "peak_rss_mib": rss, "report": report}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "report"}), f"{time.time() - t:.0f} s", flush=True)
        return report

    step("dm", ["distill", a.train, "--method", "dm", "--set", f"iterations={a.iterations}",
                "--set", f"batch_real={a.batch_real}", *common, "-o", str(work / "dm")])
    make_features(cache, a.train, work / "features.npy")
    step("dq", ["distill", a.train, "--method", "dq", "--features", str(work / "features.npy"), *common,
                "-o", str(work / "dq")])
    evals = {}
    for m in ("dm", "dq"):
        evals[m] = step(f"evaluate {m}", ["evaluate", str(work / m), "--test", a.test, "--label-key", "json:label",
                                          "--epochs", str(a.epochs), "--runs", "1", "--test-limit",
                                          str(a.test_limit), "--json"])
    result = {"train": a.train, "test": a.test, "ipc": a.ipc, "iterations": a.iterations, "batch_real": a.batch_real,
              "epochs": a.epochs, "steps": rows,
              "table": {m: {"set": (r.get("compressed") or {}).get("mean"), "random": (r.get("random") or {}).get("mean"),
                            "model": (r.get("protocol") or {}).get("model")} for m, r in evals.items()},
              "load": os.getloadavg()}
    print(json.dumps(result["table"], indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
