"""Selection machinery shared by selection methods: kNN similarity graphs and GraphCut / DQ bins.

Pure numpy (+ faiss, imported lazily, for kNN graphs); no torch.
"""
from .graphcut import (dense_cosine_sim, gradient_embedding_features, gradient_embedding_sim,
                       graphcut_greedy_dense, graphcut_greedy_sparse, graphcut_naive_reference,
                       graphcut_objective, make_bins, mean_field_terms)
from .knn import KnnGraph, faiss_has_gpu, knn_graph, normalize_rows

__all__ = [
    "KnnGraph", "knn_graph", "faiss_has_gpu", "normalize_rows",
    "dense_cosine_sim", "gradient_embedding_sim", "gradient_embedding_features",
    "graphcut_naive_reference", "graphcut_greedy_dense", "graphcut_greedy_sparse",
    "graphcut_objective", "make_bins", "mean_field_terms",
]
