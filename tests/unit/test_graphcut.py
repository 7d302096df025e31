"""GraphCut greedy paths, kNN graphs and DQ bins on tiny clustered data (float64 for parity)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from dcompress.methods.select import (KnnGraph, dense_cosine_sim, gradient_embedding_features,  # noqa: E402
                                      faiss_has_gpu, gradient_embedding_sim, graphcut_greedy_dense, graphcut_greedy_sparse,
                                      graphcut_naive_reference, graphcut_objective, knn_graph, make_bins,
                                      mean_field_terms, normalize_rows)
from dcompress.methods.select.graphcut import _bin_sizes  # noqa: E402


def clustered(n: int, d: int = 16, centers: int = 8, spread: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    return c[rng.integers(0, centers, n)] + spread * rng.normal(size=(n, d))


def brute_force_greedy(sim: np.ndarray, budget: int, lam: float) -> list[int]:
    """Argmax of the objective increment f(S + i) − f(S), ties to the lowest index."""
    chosen: list[int] = []
    for _ in range(budget):
        base = graphcut_objective(sim, chosen, None, lam)
        incs = [(graphcut_objective(sim, chosen + [i], None, lam) - base, i)
                for i in range(len(sim)) if i not in chosen]
        best = max(v for v, _ in incs)
        chosen.append(min(i for v, i in incs if v >= best - 1e-12))
    return chosen


# --- greedy parity ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data500():
    x = clustered(500, d=24, centers=10)
    return x, dense_cosine_sim(x), knn_graph(x, 10_000, dtype=np.float64)


@pytest.mark.parametrize("lam", [0.4, 1.0, 2.5])
def test_sparse_equals_dense_equals_naive_complete_graph(data500, lam):
    x, sim, g = data500
    assert g.info["k_clipped"] and g.nnz == 500 * 499
    naive = graphcut_naive_reference(sim, 60, lam)
    dense = graphcut_greedy_dense(sim, 60, lam)
    sparse = graphcut_greedy_sparse(g, np.arange(500), 60, lam)
    np.testing.assert_array_equal(dense, naive)
    np.testing.assert_array_equal(sparse, naive)
    f_dense, f_sparse = graphcut_objective(sim, naive, None, lam), graphcut_objective(g, sparse, None, lam)
    assert f_sparse == pytest.approx(f_dense, rel=1e-12)


def test_pool_restriction_matches_subset_matrix(data500):
    x, sim, g = data500
    pool = np.sort(np.random.default_rng(1).choice(500, 300, replace=False))
    naive = pool[graphcut_naive_reference(sim[np.ix_(pool, pool)], 40)]
    np.testing.assert_array_equal(graphcut_greedy_dense(sim, 40, pool=pool), naive)
    np.testing.assert_array_equal(graphcut_greedy_sparse(g, pool, 40), naive)


def test_lazy_heap_on_truncated_graph_equals_dense():
    """k << n: the lazy heap must still equal an O(n)-per-step greedy on the same similarity."""
    x = clustered(400, seed=3)
    g = knn_graph(x, 6, dtype=np.float64)
    assert not g.info["k_clipped"]
    pool = np.arange(0, 400, 2)
    np.testing.assert_array_equal(graphcut_greedy_sparse(g, pool, 80, 1.0),
                                  graphcut_greedy_dense(g.to_dense(), 80, 1.0, pool=pool))


def test_mean_field_terms_are_exact():
    x = clustered(200, seed=8)
    x[17] = 0.0  # zero row: s = 0.5 with everyone, s_ii = 1
    sim = dense_cosine_sim(x)
    pool = np.arange(3, 200, 3)
    colsum, mean = mean_field_terms(normalize_rows(x, np.float64), pool)
    sub = sim[np.ix_(pool, pool)]
    np.testing.assert_allclose(colsum, sub.sum(0), rtol=1e-13)
    assert mean == pytest.approx((sub.sum() - len(pool)) / (len(pool) * (len(pool) - 1)), rel=1e-13)


def test_sparse_fill_heap_equals_dense_emulation():
    """fill > s on many edges makes gains rise; the heap must still give the exact argmax."""
    x = clustered(300, d=16, spread=1.0, seed=6)
    g = knn_graph(x, 12, dtype=np.float64)
    fill, pool, budget = 0.8, np.arange(1, 300), 70
    colsum = dense_cosine_sim(x)[np.ix_(pool, pool)].sum(0)
    sim = np.where(g.to_dense(diag=0.0) > 0, g.to_dense(), fill)  # absent pairs = fill
    np.fill_diagonal(sim, 1.0)
    assert (g.data < fill).mean() > 0.2
    base = np.full(300, -np.inf)
    base[pool] = colsum
    acc, expect = np.zeros(300), []
    for _ in range(budget):
        gains = base - 2 * acc
        gains[expect] = -np.inf
        expect.append(int(np.argmax(gains)))
        acc += sim[expect[-1]]
    got = graphcut_greedy_sparse(g, pool, budget, colsum=colsum, fill=fill)
    assert got.tolist() == expect


def test_mean_field_is_closer_to_dense_than_graph_only():
    x = clustered(600, d=32, centers=12, spread=0.8, seed=21)
    sim, g = dense_cosine_sim(x), knn_graph(x, 8)
    f_ref = graphcut_objective(sim, graphcut_greedy_dense(sim, 60))
    colsum, fill = mean_field_terms(normalize_rows(x), np.arange(600))
    f_graph = graphcut_objective(sim, graphcut_greedy_sparse(g, np.arange(600), 60))
    f_mf = graphcut_objective(sim, graphcut_greedy_sparse(g, np.arange(600), 60, colsum=colsum, fill=fill))
    assert f_ref - f_mf < 0.2 * (f_ref - f_graph)  # measured: -0.3% vs -3.1%


def test_incremental_equals_brute_force_20_points():
    sim = dense_cosine_sim(clustered(20, d=5, centers=3, seed=7))
    for lam in (0.5, 1.0, 3.0):
        assert graphcut_greedy_dense(sim, 8, lam).tolist() == brute_force_greedy(sim, 8, lam)


def test_ties_go_to_lowest_index():
    x = np.repeat(clustered(5, d=4, seed=2), 3, axis=0)  # exact duplicates: exact ties
    sim = dense_cosine_sim(x)
    naive = graphcut_naive_reference(sim, 6)
    np.testing.assert_array_equal(graphcut_greedy_dense(sim, 6), naive)
    g = knn_graph(x, 100, dtype=np.float64)
    np.testing.assert_array_equal(graphcut_greedy_sparse(g, np.arange(15), 6), naive)


def test_float32_near_ties_objectives_agree():
    """float32 (DQ's dtype) may pick different sets at near-ties, but f stays within ~1e-6."""
    rng = np.random.default_rng(5)
    base = clustered(150, d=32, seed=5)
    x = np.concatenate([base, base + 1e-4 * rng.normal(size=base.shape)])  # near-duplicate pairs
    sim64 = dense_cosine_sim(x)
    ref = graphcut_greedy_dense(sim64, 60)
    f_ref = graphcut_objective(sim64, ref, None, 1.0)
    for sel in (graphcut_naive_reference(dense_cosine_sim(x, np.float32), 60),
                graphcut_greedy_dense(dense_cosine_sim(x, np.float32), 60),
                graphcut_greedy_sparse(knn_graph(x, 1000), np.arange(300), 60)):
        assert abs(graphcut_objective(sim64, sel, None, 1.0) - f_ref) <= 1e-6 * abs(f_ref)


def test_gradient_embedding_factorised_equals_explicit():
    rng = np.random.default_rng(0)
    b, e = rng.normal(size=(9, 4)), rng.normal(size=(9, 6))
    b[3] = 0.0  # a zero gradient: cos 0 with the others, s = 0.5
    explicit = gradient_embedding_features(b, e)
    assert explicit.shape == (9, 4 * 7)
    np.testing.assert_allclose(gradient_embedding_sim(b, e), dense_cosine_sim(explicit), rtol=0, atol=1e-12)


# --- kNN graph -------------------------------------------------------------------------------

def check_csr(g: KnnGraph) -> None:
    rows = np.repeat(np.arange(g.n), np.diff(g.indptr))
    assert g.indptr[0] == 0 and g.indptr[-1] == len(g.indices) == len(g.data)
    assert not np.any(rows == g.indices), "self loop"
    for i in range(g.n):
        cols, _ = g.neighbors(i)
        assert np.all(np.diff(cols) > 0), "row not sorted / duplicate"
    dense = g.to_dense()
    np.testing.assert_array_equal(dense, dense.T)
    assert g.data.min() >= 0 and g.data.max() <= 1


@pytest.mark.parametrize("method", ["exact", "hnsw", "ivf"])
def test_knn_graph_structure_recall_and_determinism(method):
    x = clustered(2000, d=32, centers=20, spread=0.4, seed=11)
    g = knn_graph(x, 10, method=method, recall_sample=300)
    check_csr(g)
    assert g.info["method"] == method and g.info["k"] == 10 and not g.info["k_clipped"]
    assert g.info["recall_at_k"] > 0.9
    assert g.info["recall_queries"] == (0 if method == "exact" else 300)
    assert np.diff(g.indptr).min() >= 10  # every row keeps its own k after symmetrisation
    again = knn_graph(x, 10, method=method, recall_sample=300)
    for a in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(again, a), getattr(g, a))


def test_knn_exact_matches_dense_top_k():
    x = clustered(300, seed=4)
    g = knn_graph(x, 5, dtype=np.float64)
    sim = dense_cosine_sim(x)
    np.fill_diagonal(sim, -1)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    for i in range(300):
        assert set(top[i]) <= set(g.neighbors(i)[0].tolist())
    edge = g.to_dense(diag=0.0) > 0
    np.testing.assert_allclose(g.to_dense()[edge], sim[edge], rtol=0, atol=1e-15)


def test_k_clipping_and_auto_choice():
    x = clustered(6, d=4)
    g = knn_graph(x, 10)
    assert g.info["k"] == 5 and g.info["k_clipped"] and g.info["k_requested"] == 10
    assert g.nnz == 6 * 5 and g.info["method"] == "exact"
    assert knn_graph(clustered(50), 3, exact_max=20).info["method"] == "hnsw"
    with pytest.raises(ValueError, match="k must be"):
        knn_graph(x, 0)
    with pytest.raises(ValueError, match="method"):
        knn_graph(x, 2, method="annoy")
    if not faiss_has_gpu():
        with pytest.raises(ValueError, match="faiss-gpu"):
            knn_graph(x, 2, use_gpu="always")


# --- DQ bins ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labelled():
    sizes = [37, 50, 23]
    x = clustered(sum(sizes), d=12, seed=9)
    labels = np.repeat([5, 7, 9], sizes)[np.random.default_rng(0).permutation(sum(sizes))]
    return x, labels


@pytest.mark.parametrize("dense_max", [10_000, 0])
def test_bins_disjoint_cover_and_class_shares(labelled, dense_max):
    x, labels = labelled
    seen = []
    bins, info = make_bins(x, labels, 4, k=8, dense_max=dense_max, progress=seen.append)
    assert [p["class"] for p in seen] == [5, 7, 9] and seen[-1]["done"] == seen[-1]["of"] == 3
    assert bins.dtype == np.int32 and bins.min() == 0 and bins.max() == 3  # every sample in one bin
    for c in (5, 7, 9):
        counts = np.bincount(bins[labels == c], minlength=4).tolist()
        assert counts == _bin_sizes(int((labels == c).sum()), 4)
    kernels = {r["kernel"] for r in info["classes"]}
    assert kernels == ({"dense"} if dense_max else {"knn"})
    bins2, _ = make_bins(x, labels, 4, k=8, dense_max=dense_max)
    np.testing.assert_array_equal(bins, bins2)


@pytest.mark.parametrize("sparse_gain", ["graph", "mean-field"])
def test_bins_dense_equal_complete_knn_and_dq_loop(labelled, sparse_gain):
    x, labels = labelled
    dense, _ = make_bins(x, labels, 3)
    sparse, info = make_bins(x, labels, 3, k=1000, dense_max=0, sparse_gain=sparse_gain,
                             knn_options={"dtype": np.float64})
    assert info["sparse_gain"] == sparse_gain
    np.testing.assert_array_equal(dense, sparse)
    ids = np.flatnonzero(labels == 7)  # DQ's loop: rebuild the pool's matrix each bin, naive greedy
    pool = ids
    for b, size in enumerate(_bin_sizes(len(ids), 3)[:-1]):
        picks = pool[graphcut_naive_reference(dense_cosine_sim(x[pool]), size)]
        assert set(np.flatnonzero(dense == b)) & set(ids) == set(picks)
        pool = np.setdiff1d(pool, picks)


def test_bins_gradient_factors_and_errors(labelled):
    x, labels = labelled
    rng = np.random.default_rng(0)
    b, e = rng.normal(size=(len(labels), 3)), rng.normal(size=(len(labels), 5))
    fact, _ = make_bins((b, e), labels, 2)
    expl, _ = make_bins(gradient_embedding_features(b, e), labels, 2)
    np.testing.assert_array_equal(fact, expl)
    with pytest.raises(ValueError, match="class 9 has 23 samples"):
        make_bins(x, labels, 24)
    with pytest.raises(ValueError, match="dense_max"):
        make_bins((b, e), labels, 2, dense_max=10)


def test_bin_sizes_every_bin_non_empty():
    assert _bin_sizes(6000, 10) == [600] * 10
    assert _bin_sizes(8, 5) == [1, 1, 1, 1, 4]  # round(1.6)=2 would leave the last bin empty
    for n in range(5, 60):
        s = _bin_sizes(n, 5)
        assert sum(s) == n and min(s) >= 1
