"""`make demo`: shard Fashion-MNIST, compress it (IPC 10), evaluate against random, show a grid.

Runs on 2 CPU cores in well under 15 minutes with a DEMO BUDGET (short synthesis, short
evaluation training, a 2,000-image test subset). Real benchmark budgets: tools/bench_fmnist.py.
Environment knobs: DEMO_METHOD (default: the best method registered), DEMO_IPC (10),
DEMO_EPOCHS (evaluation epochs, 30), DEMO_RUNS (2), DEMO_OUT (demo-out).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dcompress.api import distill, load_real
from dcompress.console import Reporter
from dcompress.report import grid_png
from dcompress.io.atomic import is_dcompress_output
from dcompress.io.sources import make_shards
from dcompress.registry import get_method
from dcompress.train.evaluate import evaluate

SRC = Path("/usr/share/datasets/fashion-mnist")
# Preferred order: DM beat random in the CPU demo budget (docs/results.md, "Demo"); herding is the fallback.
PREFERENCE = [("dm", {"iterations": "60", "batch_real": "32"}), ("herding", {})]

console = Console(stderr=True)


def pick_method() -> tuple[str, dict]:
    wanted = os.environ.get("DEMO_METHOD")
    for name, sets in PREFERENCE:
        if wanted and name != wanted:
            continue
        try:
            get_method(name)
            return name, sets
        except Exception:  # noqa: BLE001 - not registered in this build
            continue
    return wanted or "random", {}


def main() -> int:
    out = Path(os.environ.get("DEMO_OUT", "demo-out"))
    ipc = int(os.environ.get("DEMO_IPC", "10"))
    epochs = int(os.environ.get("DEMO_EPOCHS", "30"))
    runs = int(os.environ.get("DEMO_RUNS", "2"))
    if not (SRC / "train-images-idx3-ubyte.gz").exists():
        console.print(f"[red]missing {SRC}[/]: apt-get install -y dataset-fashion-mnist")
        return 1
    t0 = time.time()
    for split in ("train", "test"):
        dest = out / f"fmnist-{split}"
        if not is_dcompress_output(dest):
            console.print(f"sharding Fashion-MNIST {split} -> {dest}")
            make_shards(SRC, dest, fmt="idx", split=split, shard_size=10000)
    console.print("reading shards")
    train = load_real(out / "fmnist-train")
    test = load_real(out / "fmnist-test")
    method, sets = pick_method()
    sets_list = [f"{k}={v}" for k, v in sets.items()]
    console.print(f"[bold]DEMO BUDGET[/]: {method} IPC {ipc} {sets_list or ''}; evaluation {epochs} epochs x {runs} runs "
                  f"on a 2,000-image test subset (published protocols train 300-1000 epochs)")
    comp = out / f"{method}-ipc{ipc}"
    with Reporter() as prog:           # the CLI's progress on stderr: bar on a terminal, timed lines in a log
        rep = distill(None, method, out=comp, ipc=ipc, sets=sets_list, device="auto", real=train,
                      progress=prog, log=prog.event)
    if rep.get("up_to_date"):
        console.print(f"{comp} already holds this run's output (same request and input): reused")
    else:
        console.print(f"compressed {len(train)} -> {rep['samples']} images in {rep['timings']['fit_s']} s ({comp})")
    with Reporter() as prog:
        ev = evaluate(comp, test, train=train, runs=runs, epochs=epochs, test_limit=2000, seed=0,
                      progress=prog, log=prog.event)
    grid = grid_png(comp)              # OUT/grid.png, written with the output too
    table = Table(title=f"Fashion-MNIST, {rep['samples']} training images (DEMO BUDGET)")
    table.add_column("training set")
    table.add_column("test accuracy %")
    c, r = ev["compressed"], ev["random"]
    table.add_row(f"{method} IPC {ipc} ({rep['labels']} labels)", f"{c['mean']:.2f} ± {c['std']:.2f}")
    table.add_row(f"random IPC {ipc} ({r['labels']})", f"{r['mean']:.2f} ± {r['std']:.2f}")
    Console().print(table)
    Console().print(f"preview grid: {grid}\ntotal {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
