"""Herding (Welling 2009; the DC paper's coreset baseline): per class, greedily add the
sample that keeps the running mean of selected embeddings closest to the class mean.

Features: the teacher network's penultimate embedding (trained on the full input).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import MethodInfo, register_method
from ..config import Validated
from ..core import CompressedSet, LogFn, RealData, RunSpec
from .base import select_on_teacher_features


def herding_order(feats: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices (into feats [n, d]) picked by herding, in pick order; float64, ties -> lowest index."""
    f = feats.double()
    mu = f.mean(0)
    chosen: list[int] = []
    acc = torch.zeros_like(mu)
    available = torch.ones(f.shape[0], dtype=torch.bool)
    for t in range(1, budget + 1):
        # distance of the candidate running mean to the class mean
        cand = (acc.unsqueeze(0) + f) / t
        dist = (cand - mu).pow(2).sum(1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        acc += f[i]
    return torch.tensor(chosen, dtype=torch.int64)


@register_method
class Herding:
    info = MethodInfo("herding", "selection", "per-class herding on teacher embeddings", needs_teacher=True)

    @dataclass(frozen=True)
    class Config(Validated):
        pass

    def __init__(self, config: "Herding.Config"):
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        return select_on_teacher_features(real, spec, log, herding_order)
