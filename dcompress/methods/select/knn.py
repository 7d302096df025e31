"""Cosine kNN similarity graphs (faiss) for GraphCut at scale.

The graph stores s_ij = 0.5 + 0.5·cos(f_i, f_j) (DQ's similarity, in [0, 1]) for the k nearest
neighbours of every sample, symmetrised (an edge kept if i→j or j→i), as a CSR matrix. Memory is
O(N·k); no N×N matrix is ever formed. The diagonal is implicit: s_ii = 1 for every sample.

faiss is an optional dependency (`pip install dcompress[cpu]` or `[gpu]`) and is imported lazily,
so the dense GraphCut path never needs it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

METHODS = ("auto", "exact", "hnsw", "ivf")
_BLOCK_BYTES = 256 << 20        # rows per block so that a normalised float32 block is <= 256 MiB
_GPU_EXACT_MAX = 4_000_000      # with a GPU, "auto" stays brute force up to this many samples
_GPU_MAX_K = 2048               # faiss GPU top-k limit (GPU_MAX_SELECTION_K)


@dataclass
class KnnGraph:
    """Symmetric sparse similarity graph in CSR form.

    Attributes:
        indptr: int64 [n+1]; row i's neighbours are `indices[indptr[i]:indptr[i+1]]`.
        indices: int32 (int64 when n >= 2**31) [nnz], sorted ascending within each row, no
            duplicates, no self loops.
        data: float32 or float64 [nnz], s_ij in [0, 1]; `data` of (i, j) equals that of (j, i).
        n: number of nodes.
        info: how it was built (method, k, k_clipped, recall_at_k, build_s, gpu, ...).
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n: int
    info: dict = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def neighbors(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.indices[a:b], self.data[a:b]

    def to_dense(self, diag: float = 1.0) -> np.ndarray:
        """n×n float64 matrix with `diag` on the diagonal and 0 for absent edges (small n only)."""
        out = np.zeros((self.n, self.n))
        rows = np.repeat(np.arange(self.n), np.diff(self.indptr))
        out[rows, self.indices] = self.data
        np.fill_diagonal(out, diag)
        return out


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the kNN graph needs faiss: pip install 'dcompress[cpu]' (faiss-cpu) "
                          "or 'dcompress[gpu]' (faiss-gpu)") from e
    return faiss


def faiss_has_gpu() -> bool:
    """True when the installed faiss is a GPU build and sees at least one GPU."""
    faiss = _faiss()
    return "GPU" in faiss.get_compile_options() and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def normalize_rows(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows scaled to unit L2 norm in `dtype` (a new array); all-zero rows stay zero (cos 0)."""
    out = np.array(x, dtype=dtype, copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    out /= np.where(norms > 0, norms, 1)[:, None]
    return out


def _resolve_gpu(use_gpu) -> bool:
    if use_gpu in ("auto", None):
        return faiss_has_gpu()
    if use_gpu in ("never", False):
        return False
    if use_gpu in ("always", True):
        if not faiss_has_gpu():
            raise ValueError("use_gpu='always' but faiss has no GPU support here: install faiss-gpu "
                             "(pip install 'dcompress[gpu]') on a machine with a CUDA GPU, or use 'auto'")
        return True
    raise ValueError(f"use_gpu must be 'auto', 'never' or 'always', got {use_gpu!r}")


def _exact_search(feats: np.ndarray, kk: int, queries: np.ndarray | None, gpu_res=None):
    """Exact top-kk inner products of normalised `feats[queries]` against all normalised rows.

    Tiled over blocks of the base so memory stays O(block + nq·kk); returns (D float32, I int64).
    """
    faiss = _faiss()
    n, d = feats.shape
    rows = max(1024, _BLOCK_BYTES // (4 * d))
    qids = np.arange(n) if queries is None else np.asarray(queries)
    heap = faiss.ResultHeap(len(qids), kk, keep_max=True)
    for b0 in range(0, n, rows):
        xb = normalize_rows(feats[b0:b0 + rows])
        kb = min(kk, len(xb))
        for q0 in range(0, len(qids), rows):
            sub = qids[q0:q0 + rows]
            xq = normalize_rows(feats[sub[0]:sub[-1] + 1] if queries is None else feats[sub])
            if gpu_res is not None:
                D, I = faiss.knn_gpu(gpu_res, xq, xb, kb, metric=faiss.METRIC_INNER_PRODUCT)
            else:
                D, I = faiss.knn(xq, xb, kb, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result_subset(np.arange(q0, q0 + len(sub)), D, I + b0)
    heap.finalize()
    return heap.D, heap.I


def _build_index(feats: np.ndarray, method: str, seed: int, gpu_res, params: dict):
    """An approximate faiss index over the normalised rows (added block by block)."""
    faiss = _faiss()
    n, d = feats.shape
    rows = max(1024, _BLOCK_BYTES // (4 * d))
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(d, params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        if gpu_res is not None:
            index = faiss.index_cpu_to_gpu(gpu_res, 0, index)
        rng = np.random.default_rng(seed)
        train = np.sort(rng.choice(n, size=min(n, 256 * params["nlist"]), replace=False))
        index.train(normalize_rows(feats[train]))
    for b0 in range(0, n, rows):
        index.add(normalize_rows(feats[b0:b0 + rows]))
    space = faiss.GpuParameterSpace() if gpu_res is not None else faiss.ParameterSpace()
    if method == "hnsw":
        space.set_index_parameter(index, "efSearch", params["ef_search"])
    else:
        space.set_index_parameter(index, "nprobe", params["nprobe"])
    return index


def _drop_self(qids: np.ndarray, D: np.ndarray, I: np.ndarray, k: int, idx_dtype):
    """Per query: the first k results that are neither the query itself nor missing (-1)."""
    keep = (I != qids[:, None]) & (I >= 0)
    keep &= np.cumsum(keep, axis=1) <= k
    return I[keep].astype(idx_dtype), D[keep], keep.sum(1)


def _search_all(feats, k, method, seed, gpu_res, params, idx_dtype) -> list:
    """[cols, sims float32 = 0.5+0.5cos, counts] of the directed kNN lists, row-major."""
    n, d = feats.shape
    if method == "exact":
        D, I = _exact_search(feats, k + 1, None, gpu_res)
        return list(_drop_self(np.arange(n), 0.5 + 0.5 * D, I, k, idx_dtype))
    index = _build_index(feats, method, seed, gpu_res, params)
    rows = max(1024, _BLOCK_BYTES // (4 * d))
    parts = []
    for q0 in range(0, n, rows):
        xq = normalize_rows(feats[q0:q0 + rows])
        D, I = index.search(xq, k + 1)
        parts.append(_drop_self(np.arange(q0, q0 + len(xq)), 0.5 + 0.5 * D, I, k, idx_dtype))
    del index, xq, D, I
    return [np.concatenate(p) for p in zip(*parts)]


def _edge_sims64(feats: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """0.5 + 0.5·cos for the given pairs, in float64, chunked (no N×N and no N×d float64 copy)."""
    out = np.empty(len(lo))
    d = feats.shape[1]
    norms = np.sqrt(np.einsum("ij,ij->i", feats, feats, dtype=np.float64))
    norms[norms == 0] = 1.0
    step = max(1024, (64 << 20) // (8 * d))
    for a in range(0, len(lo), step):
        x = feats[lo[a:a + step]].astype(np.float64) / norms[lo[a:a + step], None]
        y = feats[hi[a:a + step]].astype(np.float64) / norms[hi[a:a + step], None]
        out[a:a + step] = 0.5 + 0.5 * np.einsum("ij,ij->i", x, y)
    return out


def _symmetric_csr(n: int, found: list, idx_dtype, feats=None):
    """CSR of the union of i→j and j→i, sorted by column. Weight of an edge found from both sides:
    the larger of the two float32 values (they differ by rounding only), or recomputed in float64
    from `feats` when given. `found` = [cols, sims, counts] is emptied so its arrays can be freed
    early (peak ≈ 32 bytes per directed edge)."""
    cols, sims, counts = found
    found.clear()
    rows = np.repeat(np.arange(n, dtype=idx_dtype), counts)
    keys = np.minimum(rows, cols).astype(np.int64)
    keys *= n
    keys += np.maximum(rows, cols)
    del rows, cols
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    sims = sims[order]
    del order
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    w = np.maximum.reduceat(sims, starts) if len(keys) else sims[:0]
    del sims
    keys = keys[starts]
    del starts
    lo, hi = (keys // n).astype(idx_dtype), (keys % n).astype(idx_dtype)
    del keys
    if feats is not None:
        w = _edge_sims64(feats, lo, hi)
    np.clip(w, 0.0, 1.0, out=w)  # s >= 0 is what makes the lazy greedy exact
    # Mirrored half first: within row i its columns (< i) precede the original half's (> i), and
    # each half is already column-sorted, so a stable sort by row yields column-sorted rows.
    perm = np.argsort(hi, kind="stable")
    r = np.concatenate([hi[perm], lo])
    c = np.concatenate([lo[perm], hi])
    v = np.concatenate([w[perm], w])
    del perm, lo, hi, w
    order = np.argsort(r, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    del r
    c = c[order]
    v = v[order]
    return indptr, c, v


def _recall(cols, counts, exact_I, qids, k) -> float:
    starts = np.r_[0, np.cumsum(counts)]
    hits = 0
    for row, q in enumerate(qids):
        approx = cols[starts[q]:starts[q + 1]]
        exact = exact_I[row][exact_I[row] != q][:k]
        hits += np.intersect1d(approx, exact, assume_unique=True).size
    return hits / (k * len(qids))


def knn_graph(feats: np.ndarray, k: int, *, method: str = "auto", exact_max: int = 20000,
              use_gpu: str = "auto", recall_sample: int = 1000, seed: int = 0,
              dtype=np.float32, ef_search: int | None = None, hnsw_m: int = 32,
              ef_construction: int = 64, nprobe: int = 16) -> KnnGraph:
    """Symmetrised cosine kNN graph with weights s_ij = 0.5 + 0.5·cos(f_i, f_j).

    Args:
        feats: [N, D] features (any float dtype; copies are normalised in float32 for faiss).
        k: neighbours per sample before symmetrisation; k >= N is clipped to N-1 (complete graph,
            `info["k_clipped"]`).
        method: "exact" (brute force, tiled), "hnsw" (IndexHNSWFlat), "ivf" (IVFFlat,
            nlist ≈ 4·sqrt(N)), or "auto": exact when N <= exact_max, else hnsw (CPU). With a GPU,
            auto is exact (GPU brute force) up to 4M samples, else ivf.
        use_gpu: "auto" (when `faiss_has_gpu()`), "never" or "always".
        recall_sample: approximate methods measure recall@k against exact search on this many
            queries (seeded); `info["recall_at_k"]`.
        seed: for the recall sample and IVF training.
        dtype: np.float32 keeps faiss's float32 similarities; np.float64 recomputes every edge weight
            in float64 from `feats` (bit-for-bit comparable with `dense_cosine_sim`; costs a gather).
        ef_search: HNSW efSearch (default max(64, 2·(k+1))); hnsw_m, ef_construction: HNSW build;
        nprobe: IVF lists searched.

    Reproducibility: exact and IVF results are deterministic. faiss 1.15.1 (tested) builds HNSW
    graphs deterministically, independent of the thread count; older releases insert with locks
    and can differ between runs, so `auto` stays exact up to `exact_max` (docs/graphcut.md).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"feats must be [N, D], got shape {feats.shape}")
    if feats.dtype not in (np.float32, np.float64):
        feats = feats.astype(np.float32)
    n = feats.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < 2:
        raise ValueError(f"a kNN graph needs at least 2 samples, got {n}")
    t0 = time.perf_counter()
    gpu = _resolve_gpu(use_gpu)
    k_eff = min(k, n - 1)
    if method == "auto":
        method = ("exact" if n <= _GPU_EXACT_MAX else "ivf") if gpu else ("exact" if n <= exact_max else "hnsw")
    note = None
    if gpu and (method == "hnsw" or k_eff + 1 > _GPU_MAX_K):
        note = "faiss has no GPU HNSW" if method == "hnsw" else f"k+1 > {_GPU_MAX_K} (faiss GPU limit)"
        gpu = False
    gpu_res = _faiss().StandardGpuResources() if gpu else None
    nlist = int(max(1, min(round(4 * math.sqrt(n)), n // 39)))
    params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction,
              "ef_search": ef_search or max(64, 2 * (k_eff + 1)), "nlist": nlist, "nprobe": nprobe}
    idx_dtype = np.int32 if n < 2**31 else np.int64
    found = _search_all(feats, k_eff, method, seed, gpu_res, params, idx_dtype)
    recall, n_recall = 1.0, 0
    if method != "exact" and recall_sample > 0:
        rng = np.random.default_rng(seed)
        qids = np.sort(rng.choice(n, size=min(recall_sample, n), replace=False))
        _, exact_I = _exact_search(feats, k_eff + 1, qids, gpu_res)
        recall, n_recall = _recall(found[0], found[2], exact_I, qids, k_eff), len(qids)
    indptr, indices, data = _symmetric_csr(n, found, idx_dtype,
                                           feats if np.dtype(dtype) == np.float64 else None)
    info = {"method": method, "k": k_eff, "k_requested": k, "k_clipped": k_eff < k, "gpu": gpu,
            "recall_at_k": float(recall), "recall_queries": n_recall, "nnz": int(indptr[-1]),
            "dtype": np.dtype(dtype).name, "faiss": _faiss().__version__,
            "build_s": round(time.perf_counter() - t0, 3)}
    if method == "hnsw":
        info.update(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=params["ef_search"])
    elif method == "ivf":
        info.update(nlist=nlist, nprobe=nprobe)
    if note:
        info["gpu_note"] = note
    return KnnGraph(indptr=indptr, indices=indices, data=data, n=n, info=info)
