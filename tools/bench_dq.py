"""Benchmark DQ binning (GraphCut) at scale: kNN graph build and 10-bin generation, time and peak RSS.

Data: structured 512-d embeddings with 10 classes — Fashion-MNIST pixels (centred) randomly
projected to --dim, tiled with small noise up to N (a Gaussian mixture with 60 sub-clusters per
class when /usr/share/datasets/fashion-mnist is absent). Never pure noise: kNN recall collapses
on isotropic Gaussians and would say nothing about real embeddings.

Every (N, k) and every comparison size runs in its own subprocess so peak memory is per run;
within a run the peak (VmHWM) is reset between the graph and the bins stage.

    python tools/bench_dq.py --sizes 10000,100000 --ks 10,50 --compare 5000,20000 --out bench.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = 10


# --- data --------------------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def base_embeddings(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(60000 × dim float32, labels, source name)."""
    rng = np.random.default_rng(seed)
    if (FMNIST / "train-images-idx3-ubyte.gz").exists():
        x = _read_idx(FMNIST / "train-images-idx3-ubyte.gz").reshape(60000, -1).astype(np.float32) / 255
        y = _read_idx(FMNIST / "train-labels-idx1-ubyte.gz").astype(np.int64)
        x -= x.mean(0)
        proj = rng.standard_normal((x.shape[1], dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        return x @ proj, y, "fashion-mnist projected"
    y = np.repeat(np.arange(CLASSES), 6000)
    centers = rng.standard_normal((CLASSES, dim), dtype=np.float32) * 2
    sub = centers[:, None] + rng.standard_normal((CLASSES, 60, dim), dtype=np.float32)
    x = sub[y, rng.integers(0, 60, y.size)] + 0.5 * rng.standard_normal((y.size, dim), dtype=np.float32)
    return x, y, "gaussian mixture (10 classes x 60 sub-clusters)"


def make_data(n: int, dim: int, seed: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray, str]:
    """n samples, exactly balanced over 10 classes, cycling each class's base rows with noise."""
    base, by, source = base_embeddings(dim, seed)
    rng = np.random.default_rng(seed + 1)
    src = []
    for c in range(CLASSES):
        rows = rng.permutation(np.flatnonzero(by == c))
        n_c = n // CLASSES + (c < n % CLASSES)
        src.append(rows[np.arange(n_c) % rows.size])
    src = np.concatenate(src)[rng.permutation(n)]
    sigma = np.float32(noise * np.sqrt((base ** 2).mean()))
    feats = np.empty((n, dim), np.float32)
    for a in range(0, n, 65536):
        s = src[a:a + 65536]
        feats[a:a + len(s)] = base[s] + sigma * rng.standard_normal((len(s), dim), dtype=np.float32)
    return feats, by[src], source


# --- memory ------------------------------------------------------------------------------------

def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_mib() -> float:
    return _status("VmHWM")


# --- workers (run in subprocesses) -------------------------------------------------------------

def worker_scale(n: int, k: int, n_bins: int, dim: int, seed: int) -> dict:
    from dcompress.methods.select import knn_graph, make_bins

    t = time.perf_counter()
    feats, labels, source = make_data(n, dim, seed)
    out = {"n": n, "k": k, "dim": dim, "source": source, "data_s": round(time.perf_counter() - t, 2),
           "features_mib": round(feats.nbytes / 2**20, 1), "rss_after_data_mib": round(_status("VmRSS"), 1)}
    scoped = reset_peak()
    base_rss = _status("VmRSS")
    t = time.perf_counter()
    g = knn_graph(feats, k, seed=seed)
    out["graph"] = {"s": round(time.perf_counter() - t, 2), "peak_mib": round(peak_mib(), 1),
                    "rss_before_mib": round(base_rss, 1),
                    "method": g.info["method"], "recall": g.info["recall_at_k"], "nnz": g.nnz,
                    "graph_mib": round((g.indptr.nbytes + g.indices.nbytes + g.data.nbytes) / 2**20, 1)}
    del g
    reset_peak()
    base_rss = _status("VmRSS")
    t = time.perf_counter()
    bins, info = make_bins(feats, labels, n_bins, k=k, seed=seed)
    kinds = sorted({r["knn"]["method"] if r["kernel"] == "knn" else "dense" for r in info["classes"]})
    recalls = [r["knn"]["recall_at_k"] for r in info["classes"] if r["kernel"] == "knn"]
    out["bins"] = {"s": round(time.perf_counter() - t, 2), "peak_mib": round(peak_mib(), 1),
                   "rss_before_mib": round(base_rss, 1), "kernels": kinds,
                   "recall_min": min(recalls) if recalls else None,
                   "build_s": info["build_s"], "greedy_s": info["greedy_s"]}
    out["peak_scope"] = "stage" if scoped else "process"
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)  # other jobs on the machine skew the timings
    return out


def dq_naive_bins(feats, labels, n_bins, dtype) -> np.ndarray:
    """DQ's loop: per class and bin, a dense matrix of the remaining pool and NaiveGreedy."""
    from dcompress.methods.select import dense_cosine_sim, graphcut_naive_reference
    from dcompress.methods.select.graphcut import _bin_sizes

    bins = np.full(len(labels), -1, np.int32)
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        for b, size in enumerate(_bin_sizes(pool.size, n_bins)):
            if b == n_bins - 1:
                picks = pool
            else:
                picks = pool[graphcut_naive_reference(dense_cosine_sim(feats[pool], dtype), size)]
            bins[picks] = b
            pool = np.setdiff1d(pool, picks)
    return bins


def worker_compare(n: int, n_bins: int, dim: int, seed: int, ks: list[int]) -> dict:
    from dcompress.methods.select import dense_cosine_sim, graphcut_objective, make_bins

    feats, labels, source = make_data(n, dim, seed)
    runs = {}
    for name, fn in [("dq-naive fp64", lambda: dq_naive_bins(feats, labels, n_bins, np.float64)),
                     ("dq-naive fp32 (DQ)", lambda: dq_naive_bins(feats, labels, n_bins, np.float32)),
                     ("ours dense fp64", lambda: make_bins(feats, labels, n_bins)[0])] + \
                    [(f"ours kNN k={k} {mode}", lambda k=k, mode=mode: make_bins(
                        feats, labels, n_bins, k=k, dense_max=0, sparse_gain=mode)[0])
                     for k in ks for mode in ("mean-field", "graph")]:
        t = time.perf_counter()
        runs[name] = {"bins": fn(), "s": time.perf_counter() - t}
    ref = runs["dq-naive fp64"]["bins"]
    objective = {}
    for name, r in runs.items():  # bin 0 sees the same pool (the whole class) in every variant
        objective[name] = sum(graphcut_objective(dense_cosine_sim(feats[labels == c]),
                                                 np.flatnonzero(r["bins"][labels == c] == 0))
                              for c in range(CLASSES))
    rows = []
    for name, r in runs.items():
        jac = [len(a & b) / len(a | b) for c in range(CLASSES) for bb in range(n_bins - 1)
               for a, b in [(set(np.flatnonzero((r["bins"] == bb) & (labels == c))),
                             set(np.flatnonzero((ref == bb) & (labels == c))))]]
        rows.append({"variant": name, "s": round(r["s"], 3),
                     "speedup_vs_dq": round(runs["dq-naive fp32 (DQ)"]["s"] / r["s"], 1),
                     "bin0_objective": objective[name],
                     "bin0_obj_rel_diff": (objective[name] - objective["dq-naive fp64"]) / abs(objective["dq-naive fp64"]),
                     "jaccard_mean": round(float(np.mean(jac)), 4),
                     "same_bin_frac": round(float((r["bins"] == ref).mean()), 4)})
    return {"n": n, "per_class": n // CLASSES, "n_bins": n_bins, "source": source, "rows": rows,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


# --- driver ------------------------------------------------------------------------------------

def run_worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(scale: list[dict], compare: list[dict]) -> str:
    lines = []
    if scale:
        lines += ["| N | k | stage | method | recall@k | time s | peak RSS MiB (before stage) | features MiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in scale:
            g, b = r["graph"], r["bins"]
            lines.append(f"| {r['n']:,} | {r['k']} | kNN graph (all N) | {g['method']} | {g['recall']:.4f} | "
                         f"{g['s']} | {g['peak_mib']:.0f} ({g['rss_before_mib']:.0f}) | {r['features_mib']:.0f} |")
            rec = "-" if b["recall_min"] is None else f"min {b['recall_min']:.4f}"
            lines.append(f"| {r['n']:,} | {r['k']} | {CLASSES}-class bins (build {b['build_s']} s + greedy "
                         f"{b['greedy_s']} s) | {'+'.join(b['kernels'])} | {rec} | {b['s']} | "
                         f"{b['peak_mib']:.0f} ({b['rss_before_mib']:.0f}) | "
                         f"{r['features_mib']:.0f} |")
        lines += ["", "1-min load average at the end of each run: "
                  + ", ".join(f"N={r['n']:,}/k={r['k']}: {r['loadavg_1m']}" for r in scale), ""]
    for c in compare:
        lines += [f"N = {c['n']:,} ({c['per_class']:,}/class, {c['n_bins']} bins, {c['source']}, "
                  f"load average {c['loadavg_1m']})", "",
                  "| variant | time s | speed-up vs DQ fp32 | bin-0 objective | rel. diff vs fp64 naive | "
                  "mean Jaccard vs fp64 naive | same bin |", "|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['variant']} | {r['s']} | {r['speedup_vs_dq']}x | {r['bin0_objective']:.6f} | "
                         f"{r['bin0_obj_rel_diff']:.2e} | {r['jaccard_mean']} | {r['same_bin_frac']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="N values for the scale runs ('' = none)")
    ap.add_argument("--ks", default="10,50")
    ap.add_argument("--compare", default="5000,20000", help="N values for the naive side-by-side ('' = none)")
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the results as JSON")
    ap.add_argument("--worker", choices=["scale", "compare"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    ks = [int(v) for v in a.ks.split(",") if v]
    if a.worker == "scale":
        print(json.dumps(worker_scale(a.n, a.k, a.bins, a.dim, a.seed)))
        return
    if a.worker == "compare":
        print(json.dumps(worker_compare(a.n, a.bins, a.dim, a.seed, ks)))
        return
    common = ["--bins", str(a.bins), "--dim", str(a.dim), "--seed", str(a.seed)]
    scale, compare = [], []
    for n in [int(v) for v in a.sizes.split(",") if v]:
        for k in ks:
            scale.append(run_worker(["--worker", "scale", "--n", str(n), "--k", str(k), *common]))
            print(f"done N={n} k={k}: graph {scale[-1]['graph']['s']} s, bins {scale[-1]['bins']['s']} s",
                  file=sys.stderr, flush=True)
    for n in [int(v) for v in a.compare.split(",") if v]:
        compare.append(run_worker(["--worker", "compare", "--n", str(n), "--ks", a.ks, *common]))
        print(f"done compare N={n}", file=sys.stderr, flush=True)
    print(markdown(scale, compare))
    if a.out:
        a.out.write_text(json.dumps({"scale": scale, "compare": compare}, indent=2))


if __name__ == "__main__":
    main()
