"""One prepared run of the CUDA paths on a GPU machine; writes a JSON of timings/accuracies.

    python tools/gpu_check.py --idx /path/to/fashion-mnist --out gpu.json [--budget-s 240]

Stages (each guarded; a failure is recorded, not fatal): DM per-iteration time batched vs
per-class; DM IPC 1/10 distillation + evaluation (DM protocol: 1000 epochs, DSA) next to random;
MTT IPC 10 with a small expert buffer, full vs constant memory time per iteration. Results
go to docs/gpu.md (written by hand from the JSON, with the machine named).
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from dcompress.api import distill
from dcompress.io.stats import channel_stats, fingerprint_of
from dcompress.io.sources import FASHION_MNIST_CLASSES, read_idx
from dcompress.train.evaluate import evaluate
from dcompress.core import RealData, TensorStore


def real_from_idx(folder: Path, split: str) -> RealData:
    prefix = {"train": "train", "test": "t10k"}[split]
    x = torch.from_numpy(read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    y = torch.from_numpy(read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype("int64"))
    keys = [f"{split}{i:06d}" for i in range(len(y))]
    mean, std = channel_stats(x)
    return RealData(store=TensorStore(x), labels=y, keys=keys, class_names=FASHION_MNIST_CLASSES, mean=mean, std=std,
                    source={"urls": [str(folder)], "num_samples": len(y), "fingerprint": fingerprint_of(keys, y, x),
                            "bad_samples": {"count": 0, "examples": []},
                            "class_counts": torch.bincount(y).tolist()})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idx", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu-check"))
    ap.add_argument("--budget-s", type=float, default=240)
    args = ap.parse_args()
    t_start = time.time()
    res: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "stages": {}}
    train, test = real_from_idx(args.idx, "train"), real_from_idx(args.idx, "test")

    def save():
        args.out.write_text(json.dumps(res, indent=1, default=str))

    def stage(name, fn):
        if time.time() - t_start > args.budget_s:
            res["stages"][name] = {"skipped": "budget"}
            return
        t0 = time.time()
        try:
            res["stages"][name] = {**fn(), "wall_s": round(time.time() - t0, 1)}
        except Exception as e:  # noqa: BLE001 - record and go on
            res["stages"][name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
        print(name, json.dumps(res["stages"][name], default=str)[:600], flush=True)
        save()

    def dm_iter(batched: bool, its: int = 30):
        out = args.work / f"dm-it-{batched}"
        rep = distill(None, "dm", out=out, ipc=10, real=train, device="cuda", resume=False,
                      sets=[f"iterations={its}", f"batched={batched}"])
        return rep["timings"]["fit_s"] / its

    def dm_timing():
        dm_iter(True, 5)  # warm-up (cudnn autotune, allocator)
        a = [dm_iter(True), dm_iter(False), dm_iter(True), dm_iter(False)]
        return {"s_per_it_batched": [round(v, 4) for v in a[0::2]], "s_per_it_per_class": [round(v, 4) for v in a[1::2]],
                "batch_real": 256, "ipc": 10}

    def dm_run(ipc: int, its: int, runs: int = 3):
        out = args.work / f"dm-ipc{ipc}"
        rep = distill(None, "dm", out=out, ipc=ipc, real=train, device="cuda", resume=False, sets=[f"iterations={its}"])
        ev = evaluate(out, test, train=train, runs=runs, device=torch.device("cuda"))
        return {"iterations": its, "fit_s": rep["timings"]["fit_s"], "dm": ev["compressed"], "random": ev["random"],
                "protocol": ev["protocol"], "eval_s": ev["seconds"]}

    def mtt_run():
        sets = ["iterations=40", "syn_steps=20", "expert_epochs=2", "max_start_epoch=4", "buffer_experts=2",
                "buffer_epochs=6", "lr_img=100", "lr_teacher=0.01"]
        times = {}
        for mode in ("full", "constant", "full", "constant"):
            out = args.work / f"mtt-{mode}"
            rep = distill(None, "mtt", out=out, ipc=10, real=train, device="cuda", resume=False,
                          sets=sets + [f"memory={mode}"])
            times.setdefault(mode, []).append(rep["timings"]["fit_s"])
        ev = evaluate(args.work / "mtt-constant", test, train=train, runs=2, device=torch.device("cuda"))
        return {"fit_s": times, "note": "first run includes training the 2x6-epoch expert buffer (cached after)",
                "mtt": ev["compressed"], "random": ev["random"], "lr_used": ev["protocol"]["lr_used"]}

    stage("dm_iteration_time", dm_timing)
    stage("dm_ipc10", lambda: dm_run(10, 1000))
    stage("dm_ipc1", lambda: dm_run(1, 1000))
    stage("mtt_ipc10", mtt_run)
    res["total_s"] = round(time.time() - t_start, 1)
    save()


if __name__ == "__main__":
    main()
