"""DM (or MTT) time per iteration vs world size on this CPU (gloo), bytes communicated per
iteration, and (DM) a projection to ImageNet-1K-sized runs from the measured per-class cost.

    python tools/bench_scale.py                          # world 1 vs 2, 3 rounds, ~3-5 min here
    python tools/bench_scale.py --worlds 1,2 --rounds 5 --iterations 12 --classes 10
    python tools/bench_scale.py --method mtt --iterations 6 --syn-steps 10   # MTT: the batch split

MTT (`--method mtt`): an expert buffer (1 expert, 3 epochs) is trained once on the input; each
cell matches `--syn-steps` steps on minibatches of all C x IPC images. Both worlds run the exact
adjoint (`--set memory=constant`, what torchrun uses), so the ratio is the split's alone.
Communication per iteration: 2 all-reduces of P floats per inner step (the inner gradient, then
H·λ) plus 1 for λ_N, and the leaf gradients (C x IPC x c x H x W + 1 floats) once.

Each cell is a fresh `dcompress distill --method dm` job (world 1: one process; world W:
`torchrun --standalone --nproc-per-node W`), OMP_NUM_THREADS=1 per process, on a synthetic
input written once (`--classes` classes x 60 images, `--size` px, 3 channels). The time per
iteration is read from the output's metrics.jsonl (seconds between the 2nd and the last
iteration row, so process start, reading and writing are left out) with --ckpt-every 0.
Cells are interleaved (each round: world 1, world 2, ...) because a shared VM's speed drifts;
the table gives medians and the ratio of medians against world 1.

Communication (DM, dcompress.dist): per iteration each rank all-gathers its classes' loss terms
(4 bytes a class, plus the gather's size exchange); per checkpoint the synthetic images and
their SGD momentum (2 x C x IPC x c x H x W x 4 bytes) are gathered to write the one-process
state; at the end the images once more. The figures below are computed from these sizes.
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


def make_input(folder: Path, classes: int, size: int, per_class: int = 60) -> Path:
    """An ImageFolder tree of random PNGs, sharded with `dcompress shard`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    tree = folder / "tree"
    for c in range(classes):
        d = tree / f"class{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    subprocess.run([sys.executable, "-m", "dcompress", "shard", str(tree), str(folder / "shards"), "--format",
                    "folder", "--shard-size", "500", "--json"], check=True, capture_output=True, env=_env(folder))
    return folder / "shards"


def _env(folder: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DCOMPRESS_CACHE": str(folder / "cache")}


def experts(folder: Path, shards: Path, args: argparse.Namespace) -> Path:
    """MTT's expert buffer for the bench input (1 expert x 3 epochs), trained once."""
    buf = folder / "experts"
    subprocess.run([sys.executable, "-m", "dcompress", "experts", str(shards), "-o", str(buf), "--num-experts", "1",
                    "--epochs", "3", "--set", f"model={args.model}", "--device", "cpu", "--json"], check=True,
                   capture_output=True, env=_env(folder))
    return buf


def cell(folder: Path, shards: Path, world: int, args: argparse.Namespace, tag: str) -> float:
    """Seconds per iteration of one fresh DM (or MTT) job at `world` processes."""
    out = folder / f"out-{tag}"
    launch = [sys.executable, "-m", "dcompress"] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
         "-m", "dcompress"]
    if args.method == "mtt":
        sets = [f"syn_steps={args.syn_steps}", "expert_epochs=1", "max_start_epoch=2", "memory=constant"]
        extra = ["--experts", str(folder / "experts")]
    else:
        sets, extra = [f"batch_real={args.batch_real}", f"model={args.model}"], []
    cmd = [*launch, "distill", str(shards), "--method", args.method, "--ipc", str(args.ipc), "-o", str(out),
           "--overwrite", "--set", f"iterations={args.iterations}", *[x for v in sets for x in ("--set", v)], *extra,
           "--ckpt-every", "0", "--device", "cpu", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(folder))
    if r.returncode != 0:
        raise SystemExit(f"world {world} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").open()]
    its = [(x["iteration"], x["seconds"]) for x in rows if x.get("event") == "iteration"]
    (i0, t0), (i1, t1) = its[1], its[-1]
    return (t1 - t0) / (i1 - i0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=("dm", "mtt"), default="dm")
    ap.add_argument("--syn-steps", type=int, default=10, help="mtt: unrolled steps per iteration")
    ap.add_argument("--worlds", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch_real", type=int, default=64)
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = Path(tmp)
        shards = make_input(folder, args.classes, args.size)
        if args.method == "mtt":
            experts(folder, shards, args)
        times: dict[int, list[float]] = {w: [] for w in worlds}
        load = [os.getloadavg()[0]]
        for r in range(args.rounds):
            for w in worlds:
                times[w].append(cell(folder, shards, w, args, f"{w}-{r}"))
                print(f"round {r + 1} world {w}: {times[w][-1]:.3f} s/it", file=sys.stderr, flush=True)
        load.append(os.getloadavg()[0])
    med = {w: statistics.median(v) for w, v in times.items()}
    c, hw = 3, args.size * args.size
    image_bytes = args.classes * args.ipc * c * hw * 4
    per_class = med[1] / args.classes                 # one process: seconds per class per iteration
    if args.method == "mtt":
        from dcompress.nets import build_net

        n_par = sum(p.numel() for p in build_net(args.model, 3, args.classes, (args.size, args.size)).parameters())
        result = {
            "setup": {**vars(args), "cpu_count": os.cpu_count(), "loadavg_before_after": [round(x, 2) for x in load],
                      "date": time.strftime("%Y-%m-%d %H:%M"), "network_parameters": n_par},
            "seconds_per_iteration": {str(w): [round(x, 4) for x in v] for w, v in times.items()},
            "median": {str(w): round(m, 4) for w, m in med.items()},
            "ratio_vs_world1": {str(w): round(m / med[1], 3) for w, m in med.items()},
            "bytes_allreduced_per_iteration": {"inner_steps": (2 * args.syn_steps + 1) * n_par * 4,
                                               "leaf_gradients": (image_bytes + 4)}}
        _report(result, worlds, med, args)
        return
    result = {
        "setup": {**vars(args), "cpu_count": os.cpu_count(), "loadavg_before_after": [round(x, 2) for x in load],
                  "date": time.strftime("%Y-%m-%d %H:%M")},
        "seconds_per_iteration": {str(w): [round(x, 4) for x in v] for w, v in times.items()},
        "median": {str(w): round(m, 4) for w, m in med.items()},
        "ratio_vs_world1": {str(w): round(m / med[1], 3) for w, m in med.items()},
        "bytes_allgathered": {"per_iteration_loss_terms": 4 * args.classes,
                              "per_checkpoint_images_and_momentum": 2 * image_bytes,
                              "at_end_images": image_bytes},
        "projection_imagenet1k": {
            "note": f"1000 classes at this size/model/IPC/batch_real, from {per_class:.4f} s per class per "
                    "iteration (world 1, this CPU, 1 thread), ideal class split, communication not included",
            **{f"world_{w}_s_per_iteration": round(per_class * 1000 / w, 2) for w in (1, 8, 64)},
            **{f"world_{w}_hours_20k_iterations": round(per_class * 1000 / w * 20000 / 3600, 1) for w in (1, 8, 64)}},
    }
    _report(result, worlds, med, args)


def _report(result: dict, worlds: list[int], med: dict, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(result))
        return
    print(f"| world | s/it (median of {args.rounds}) | ratio vs 1 |")
    print("|---|---|---|")
    for w in worlds:
        print(f"| {w} | {med[w]:.3f} | {med[w] / med[1]:.2f} |")
    print(json.dumps({k: v for k, v in result.items() if k not in ("seconds_per_iteration", "median")}, indent=1))


if __name__ == "__main__":
    main()
