"""Benchmarks for expert buffers and trajectory matching (results go to docs/results.md).

    # buffer size on disk; one snapshot via mmap vs the whole expert vs a torch.save'd list
    python tools/bench_experts.py buffer --idx /usr/share/datasets/fashion-mnist --samples 2048 --epochs 50
    python tools/bench_experts.py buffer --buffer BUF

    # MTT/DATM/DD: seconds per iteration and peak memory per unroll mode, optional accuracy
    python tools/bench_experts.py matching --idx DIR --device cuda --ipc 10 --syn-steps 20 --iterations 50

Reads MNIST-style idx files directly (no shards), so it runs where webdataset is not installed.
Prints one JSON report (and a markdown table) on stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcompress.train.buffer import ExpertBuffer, expert_name  # noqa: E402
from dcompress.train.experts import ExpertConfig, train_experts  # noqa: E402
from dcompress.core import RealData, TensorStore, normalize  # noqa: E402


def idx_real(folder: Path, split: str, samples: int | None = None, seed: int = 0) -> RealData:
    """RealData from `train-`/`t10k-` idx(.gz) files; `samples` keeps a class-mixed random subset."""
    prefix = {"train": "train", "test": "t10k"}[split]

    def read(kind: str) -> np.ndarray:
        p = next(q for q in (folder / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                             folder / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte") if q.exists())
        raw = gzip.open(p).read() if p.suffix == ".gz" else p.read_bytes()
        ndim = raw[3]
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)

    x, y = read("images"), read("labels")
    if samples is not None and samples < len(y):
        keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:samples])
        x, y = x[keep], y[keep]
    images = torch.from_numpy(x.copy()).unsqueeze(1)
    labels = torch.from_numpy(y.astype(np.int64))
    f = images.double() / 255  # float64 and rounded, as io.stats.channel_stats: thread-count independent
    fp = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    return RealData(store=TensorStore(images), labels=labels, keys=[f"{split}-{i:06d}" for i in range(len(y))],
                    class_names=[str(c) for c in range(int(labels.max()) + 1)], mean=(round(float(f.mean()), 6),),
                    std=(round(float(f.std()), 6),), source={"fingerprint": f"sha256:{fp}", "urls": [str(folder)]})


def _evict(path: Path) -> None:
    """Drop a file's pages from the page cache (posix_fadvise), for cold-read timings."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed(fn, repeats: int, cold_path: Path | None) -> float:
    times = []
    for _ in range(repeats):
        if cold_path is not None:
            _evict(cold_path)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_buffer(args) -> dict:
    report: dict = {}
    if args.buffer is None:
        real = idx_real(Path(args.idx), "train", args.samples)
        out = Path(args.out or tempfile.mkdtemp(prefix="bench-experts-")) / "BUF"
        t = time.perf_counter()
        train_experts(real, out, num_experts=args.num_experts,
                      config=ExpertConfig(model=args.model, epochs=args.epochs, holdout=0.0),
                      device=torch.device(args.device))
        report["train_seconds"] = round(time.perf_counter() - t, 1)
        report["train_samples"] = len(real)
    else:
        out = Path(args.buffer)
    buf = ExpertBuffer(out)
    npy = out / expert_name(buf.ids[0], "npy")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    E, P = buf.epochs, buf.param_count
    legacy = out.parent / "legacy-expert.pt"   # MTT's replay_buffer_*.pt style: a pickled list of tensors
    torch.save([buf.snapshot(0, e) for e in range(E + 1)], legacy)
    mid = E // 2
    r = args.repeats
    rows = {
        "snapshot via mmap (cold)": _timed(lambda: ExpertBuffer(out).snapshot(0, mid), r, npy),
        "snapshot via mmap (warm)": _timed(lambda: ExpertBuffer(out).snapshot(0, mid), r, None),
        "whole expert np.load (cold)": _timed(lambda: np.load(npy, allow_pickle=False), r, npy),
        "whole expert np.load (warm)": _timed(lambda: np.load(npy, allow_pickle=False), r, None),
        "torch.load list of snapshots (cold)": _timed(lambda: torch.load(legacy, weights_only=True), r, legacy),
        "torch.load list of snapshots (warm)": _timed(lambda: torch.load(legacy, weights_only=True), r, None),
    }
    legacy.unlink()
    report.update({"buffer": str(out), "model": buf.network["name"], "experts": buf.num_experts, "epochs": E,
                   "param_count": P, "npy_bytes_per_expert": npy.stat().st_size, "buffer_bytes": total,
                   "snapshot_bytes": 4 * P, "seconds_median": {k: round(v, 6) for k, v in rows.items()},
                   "repeats": r, "torch": torch.__version__})
    lines = ["| read | median ms |", "|---|---|"] + [f"| {k} | {1000 * v:.2f} |" for k, v in rows.items()]
    report["markdown"] = "\n".join(lines)
    return report


def _peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak(dev: torch.device) -> int | None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev))
    return None


def _evaluate(cset, real: RealData, test: RealData, args, dev, soft: bool) -> dict:
    from dcompress.train.loop import accuracy, train_on_set

    proto = dataclasses.replace(cset.protocol, epochs=args.eval_epochs, soft_labels=soft)
    x_test = normalize(test.get_u8(torch.arange(len(test))), real.mean, real.std)
    out = {}
    lr = cset.lr if (proto.use_learned_lr and cset.lr is not None) else proto.lr
    accs = []
    for r in range(args.eval_runs):
        net = train_on_set(cset.images, cset.labels, num_classes=real.num_classes, protocol=proto, device=dev,
                           generator=torch.Generator().manual_seed(r), soft=cset.logits if soft else None, lr=lr)
        accs.append(accuracy(net, x_test, test.labels, device=dev))
    out["compressed"] = [round(100 * a, 2) for a in accs]
    base = dataclasses.replace(proto, soft_labels=False)
    accs = []
    for r in range(args.eval_runs):
        g = torch.Generator().manual_seed(500 + r)
        idx = torch.cat([real.sample_class(c, args.ipc, g) for c in range(real.num_classes)])
        net = train_on_set(real.get(idx), real.labels[idx], num_classes=real.num_classes, protocol=base,
                           generator=g, device=dev, lr=proto.lr)
        accs.append(accuracy(net, x_test, test.labels, device=dev))
    out["random_same_protocol_hard_labels"] = [round(100 * a, 2) for a in accs]
    out["protocol"] = {**dataclasses.asdict(proto), "lr_used": lr}
    return out


def bench_matching(args) -> dict:
    from dcompress.methods.datm import DATM
    from dcompress.methods.dd import DD
    from dcompress.train.replay import replay
    from dcompress.methods.mtt import MTT
    from dcompress.core import RunSpec

    dev = torch.device(args.device)
    real = idx_real(Path(args.idx), "train", args.samples)
    test = idx_real(Path(args.idx), "test", args.test_samples)
    report: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    "train_samples": len(real), "ipc": args.ipc, "torch": torch.__version__, "runs": []}
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-matching-"))
    if args.occupy_gb:  # shrink the free memory that memory="auto" sees
        blocker = torch.empty(int(args.occupy_gb * 2**30), dtype=torch.uint8, device=dev)  # noqa: F841
        report["occupied_bytes"] = blocker.numel()
    if "mtt" in args.methods or "datm" in args.methods:
        buf_dir = Path(args.buffer) if args.buffer else work / "BUF"
        t = time.perf_counter()
        rep = train_experts(real, buf_dir, num_experts=args.num_experts, test=test,
                            config=ExpertConfig(model=args.model, epochs=args.epochs, holdout=0.0), device=dev)
        buf = ExpertBuffer(buf_dir)
        report["experts"] = {"seconds": round(time.perf_counter() - t, 1), "trained": rep["trained"],
                             "epochs": buf.epochs, "final_test_acc": [buf.meta(e)["final_accuracy"].get("test")
                                                                        for e in range(buf.num_experts)],
                             "seconds_per_epoch": [round(buf.meta(e)["seconds"] / buf.epochs, 2)
                                                   for e in range(buf.num_experts)]}
    for name in args.methods:
        for mode in args.modes:
            if name == "dd":
                cfg = DD.Config(iterations=args.iterations, memory=mode, batch_real=args.batch_real)
                method = DD(cfg)
            else:
                common = dict(iterations=args.iterations, syn_steps=args.syn_steps, expert_epochs=args.expert_epochs,
                              max_start_epoch=args.max_start_epoch, memory=mode, batch_syn=args.batch_syn)
                method = (MTT(MTT.Config(**common)) if name == "mtt" else
                          DATM(DATM.Config(**common, current_max_start_epoch=args.max_start_epoch)))
            spec = RunSpec(ipc=args.ipc, device=dev, cache_dir=work / "cache",
                           experts=buf_dir if name != "dd" else None)
            if args.warmup:  # kernels, autotuning and allocator pools warm before the timed run
                type(method)(dataclasses.replace(method.config, iterations=args.warmup)).fit(
                    real, spec, log=lambda e: None)
            _peak_reset(dev)
            t = time.perf_counter()
            cset = method.fit(real, spec, log=lambda e: None)
            secs = time.perf_counter() - t
            row = {"method": name, "mode": mode, "memory_used": cset.info.get("memory"),
                   "seconds_per_iteration": round(secs / max(args.iterations, 1), 4),
                   "peak_bytes": None if dev.type != "cuda" else _peak(dev) - report.get("occupied_bytes", 0), "estimate_full_bytes": cset.info.get("full_graph_estimate_bytes"),
                   "step_graph_bytes": cset.info.get("step_graph_bytes"), "first_loss": cset.info.get("first_loss"),
                   "final_loss": cset.info.get("final_loss"), "lr": cset.lr,
                   "skipped": cset.info.get("skipped_updates")}
            if args.eval_epochs and mode == args.modes[0]:
                row["eval"] = _evaluate(cset, real, test, args, dev, soft=cset.logits is not None)
                if name == "dd":
                    x_test = normalize(test.get_u8(torch.arange(len(test))), real.mean, real.std)
                    row["eval"]["dd_replay"] = replay(cset.images, cset.labels, cset.lrs, cset.info["replay"], x_test,
                                                      test.labels, num_classes=real.num_classes, runs=args.eval_runs,
                                                      device=dev)
            report["runs"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("buffer")
    b.add_argument("--buffer")
    b.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    b.add_argument("--samples", type=int, default=2048)
    b.add_argument("--epochs", type=int, default=50)
    b.add_argument("--num-experts", type=int, default=2)
    b.add_argument("--model", default="convnet")
    b.add_argument("--device", default="cpu")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--out")
    m = sub.add_parser("matching")
    m.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    m.add_argument("--buffer")
    m.add_argument("--samples", type=int)
    m.add_argument("--test-samples", type=int)
    m.add_argument("--methods", nargs="+", default=["mtt"], choices=["mtt", "datm", "dd"])
    m.add_argument("--modes", nargs="+", default=["full", "constant"], choices=["auto", "full", "constant", "tesla"])
    m.add_argument("--num-experts", type=int, default=2)
    m.add_argument("--epochs", type=int, default=6)
    m.add_argument("--model", default="convnet")
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    m.add_argument("--ipc", type=int, default=10)
    m.add_argument("--iterations", type=int, default=20)
    m.add_argument("--syn-steps", type=int, default=20)
    m.add_argument("--expert-epochs", type=int, default=2)
    m.add_argument("--max-start-epoch", type=int, default=4)
    m.add_argument("--batch-syn", type=int)
    m.add_argument("--batch-real", type=int, default=1024)
    m.add_argument("--eval-epochs", type=int, default=0)
    m.add_argument("--eval-runs", type=int, default=2)
    m.add_argument("--warmup", type=int, default=0, help="untimed iterations before each timed run")
    m.add_argument("--occupy-gb", type=float, default=0, help="hold this much device memory during the runs")
    m.add_argument("--out")
    args = ap.parse_args()
    report = bench_buffer(args) if args.cmd == "buffer" else bench_matching(args)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
