"""DQ — Dataset Quantization (Zhou et al., ICCV'23), bin generation + bin sampling (methods.md §8).

1. One embedding per real image, computed once for the whole input (the reference recomputes
   them for every bin): the teacher's penultimate features (default), the DeepCore last-layer
   gradient embedding (`features=grad`, cosine from its two Gram factors), or a user's
   `FILE.npy` aligned with the input order.
2. Per class, `bins` sequential non-overlapping GraphCut bins on the remaining pool
   (`select.make_bins`: dense exact kernel for small classes, faiss kNN graph above `dense_max`).
3. Uniform class-balanced sampling from every bin so the union hits the target size.

Pixel quantisation (patch dropping + MAE reconstruction) needs pretrained MAE weights, which
cannot be had offline: left out (docs/methods/dq.md).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..config import Validated, non_negative, positive
from ..errors import InputDataError, UsageError
from ..registry import MethodInfo, register_method
from ..core import CompressedSet, LogFn, RealData, RunSpec
from ..seeds import derive
from .base import check_ipc, selection_result
from .select import make_bins

BINS_FILE, BINS_META = "bins.npy", "bins.json"


def bin_quotas(target: int, bin_sizes: list[int]) -> list[int]:
    """Splits `target` picks of one class evenly over its bins (remainder to the first,
    most representative bins), moving any excess of a small bin to the next ones."""
    k = len(bin_sizes)
    quota = [target // k + (1 if b < target % k else 0) for b in range(k)]
    spill = 0
    for b in range(k):
        quota[b] += spill
        spill = max(0, quota[b] - bin_sizes[b])
        quota[b] -= spill
    for b in range(k):  # leftover wraps to earlier bins with room
        take = min(spill, bin_sizes[b] - quota[b])
        quota[b] += take
        spill -= take
    return quota


def sample_bins(labels: torch.Tensor, bins: np.ndarray, targets: list[int], n_bins: int,
                generator: torch.Generator) -> tuple[list[torch.Tensor], list[int]]:
    """Uniform sampling inside every bin of every class. Returns per-class picks and their bins."""
    picks, pick_bins = [], []
    for c, target in enumerate(targets):
        ids = (labels == c).nonzero().flatten()
        members = [ids[torch.from_numpy(bins[ids.numpy()] == b)] for b in range(n_bins)]
        quotas = bin_quotas(target, [m.numel() for m in members])
        chosen = []
        for b, (m, q) in enumerate(zip(members, quotas)):
            if q:
                chosen.append(m[torch.randperm(m.numel(), generator=generator)[:q]])
                pick_bins += [b] * q
        picks.append(torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.int64))
    return picks, pick_bins


def load_features(path: str, real: RealData) -> np.ndarray:
    try:
        feats = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise InputDataError(f"cannot read embeddings ({e})", path=path) from None
    if feats.ndim != 2 or feats.shape[0] != len(real):
        raise InputDataError(f"embeddings have shape {tuple(feats.shape)}; expected [{len(real)}, D] "
                             f"(one row per input sample, in input order)", path=path)
    feats = np.asarray(feats, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(feats).all(1))
    if bad.size:
        raise InputDataError(f"{bad.size} embedding rows hold NaN/inf (first: row {bad[0]}, "
                             f"sample {real.keys[bad[0]]!r})", path=path)
    return feats


def spread_bins(feats, labels: np.ndarray, n_bins: int, num_classes: int, **options) -> tuple[np.ndarray, dict]:
    """`make_bins`, its classes split over torchrun's ranks (`dist.ClassSplit`) and merged: a
    class's bins depend on its own samples only, so the merged bins are those of one process;
    the info lists every class in order (timings summed). One process: `make_bins` itself."""
    if not dist.active():
        return make_bins(feats, labels, n_bins, **options)
    part = dist.ClassSplit(num_classes, 1, "dq", slots=False)
    mine = np.flatnonzero((labels >= part.lo) & (labels < part.hi))
    local = tuple(f[mine] for f in feats) if isinstance(feats, tuple) else feats[mine]
    b, info = make_bins(local, labels[mine], n_bins, **options) if mine.size else (np.zeros(0, np.int32), None)
    bins = np.full(labels.shape[0], -1, dtype=np.int32)
    merged: dict | None = None
    for idx, part_bins, part_info in dist.all_gather_object((mine, b, info)):
        bins[idx] = part_bins
        if part_info is not None:
            merged = {**part_info, "classes": [*(merged or {}).get("classes", []), *part_info["classes"]]}
    merged["build_s"] = round(sum(r["build_s"] for r in merged["classes"]), 3)
    merged["greedy_s"] = round(sum(r["greedy_s"] for r in merged["classes"]), 3)
    return bins, merged


@register_method
class DQ:
    info = MethodInfo("dq", "selection", "Dataset Quantization: GraphCut bins on a kNN graph, uniform per-bin sampling",
                      needs_teacher=True, distributed=True)   # features and per-class bins over the ranks

    @dataclass(frozen=True)
    class Config(Validated):
        bins: int = positive(10)         # number of bins (--bins)
        k: int = positive(20)            # kNN degree of the sparse graph
        lam: float = non_negative(1.0)   # GraphCut λ in DQ/DeepCore's gain λ·Σ_pool s − 2·Σ_S s
        features: str = "teacher"        # teacher | grad | path to an [N, D] .npy (--features)
        dense_max: int = positive(8192)  # classes up to this size use the exact dense kernel
        knn_method: str = "auto"         # auto | exact | hnsw | ivf
        keep_bins: bool = False          # also write every bin's indices (bins.npy + bins.json) (--keep-bins)
        from_bins: str | None = None     # re-sample the bins saved by --keep-bins in this folder (--from-bins)

    def __init__(self, config: "DQ.Config"):
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        cfg = self.config
        n_bins, source = cfg.bins, cfg.features
        counts = real.class_counts()
        ratio = spec.ratio
        targets = [max(1, round(ratio * n)) for n in counts] if ratio else [spec.ipc] * real.num_classes
        if not ratio:
            check_ipc(real, spec.ipc)
        from_bins = cfg.from_bins
        if from_bins:
            bins, binfo = self._load_bins(Path(from_bins), real)
            n_bins = binfo["n_bins"]
        else:
            feats = self._features(source, real, spec, log)
            small = min(counts)
            if n_bins > small:
                raise UsageError(f"--bins {n_bins} is larger than the smallest class "
                                 f"({real.class_names[counts.index(small)]!r}, {small} images)")

            def prog(ev: dict) -> None:
                if spec.progress:
                    spec.progress(ev["done"], ev["of"], "dq bins")
            try:
                bins, binfo = spread_bins(feats, real.labels.numpy(), n_bins, real.num_classes, lam=cfg.lam, k=cfg.k,
                                          method=cfg.knn_method, dense_max=cfg.dense_max, seed=spec.seed,
                                          progress=prog)
            except ValueError as e:  # bad k / method / kernel choice for this data
                raise UsageError(f"dq: {e}") from None
            clipped = [c["n"] for c in binfo["classes"] if c.get("knn", {}).get("k_clipped")]
            if clipped:
                log({"event": "dq_k_clipped", "k": cfg.k, "class_sizes": clipped,
                     "message": f"k={cfg.k} >= class size for {len(clipped)} class(es): clipped to n-1"})
            binfo["features"] = source
            binfo["fingerprint"] = real.source.get("fingerprint")
        picks, pick_bins = sample_bins(real.labels, bins, targets, n_bins, derive(spec.seed, "fit"))
        info = {"bins": n_bins, "k": cfg.k, "lam": cfg.lam, "features": binfo.get("features"),
                "graph_build_s": binfo.get("build_s"), "greedy_s": binfo.get("greedy_s"),
                "kernels": sorted({c["kernel"] for c in binfo.get("classes", [])}),
                "knn": [c["knn"] for c in binfo.get("classes", []) if "knn" in c][:3],
                "from_bins": str(from_bins) if from_bins else None,
                "pixel_quantization": "not applied (needs pretrained MAE weights)"}
        cset = selection_result(real, picks, info=info, extra=[{"bin": b} for b in pick_bins])
        if cfg.keep_bins:
            cset.extra_files = self._bins_files(bins, binfo, real)
        return cset

    def _features(self, source: str, real: RealData, spec: RunSpec, log: LogFn):
        if source not in ("teacher", "grad"):
            return load_features(source, real)
        from ..train.teacher import get_teacher, teacher_features

        teacher = get_teacher(real, spec, log=log)
        emb = teacher_features(teacher, real, spec.device, log=log)
        if source == "teacher":
            return emb.numpy()
        logits = torch.cat([teacher.logits(real.get(torch.arange(s, min(s + 1024, len(real)))), spec.device)
                            for s in range(0, len(real), 1024)])
        # dCE/dlogits = softmax − onehot (DeepCore applies softmax twice; we use the plain CE gradient)
        b = torch.softmax(logits.double(), 1) - torch.nn.functional.one_hot(real.labels, real.num_classes).double()
        return b.numpy(), emb.double().numpy()

    @staticmethod
    def _bins_files(bins: np.ndarray, binfo: dict, real: RealData) -> dict[str, bytes]:
        buf = io.BytesIO()
        np.save(buf, bins.astype(np.int32), allow_pickle=False)
        meta = {**{k: v for k, v in binfo.items() if k != "classes"}, "num_samples": len(real),
                "bins_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                "class_kernels": [{k: c[k] for k in ("label", "n", "kernel", "bin_sizes")} for c in binfo["classes"]]}
        return {BINS_FILE: buf.getvalue(), BINS_META: json.dumps(meta, indent=1, default=str).encode()}

    @staticmethod
    def _load_bins(folder: Path, real: RealData) -> tuple[np.ndarray, dict]:
        npy, meta_path = folder / BINS_FILE, folder / BINS_META
        if not npy.exists() or not meta_path.exists():
            raise InputDataError(f"no {BINS_FILE}/{BINS_META} here (write them with --keep-bins)", path=str(folder))
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != real.source.get("fingerprint"):
            raise InputDataError("bins were computed on a different input (fingerprint mismatch)",
                                 path=str(meta_path), key="fingerprint")
        bins = np.load(npy, allow_pickle=False)
        if bins.shape != (len(real),):
            raise InputDataError(f"bins has shape {bins.shape}, expected ({len(real)},)", path=str(npy))
        return bins, meta
