"""K-Center greedy (Sener & Savarese 2018; the DC paper's coreset baseline): per class, start
from the sample nearest the class mean, then repeatedly add the sample farthest from the
selected set (Euclidean, teacher embeddings)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import MethodInfo, register_method
from ..config import Validated
from ..core import CompressedSet, LogFn, RealData, RunSpec
from .base import select_on_teacher_features


def kcenter_order(feats: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices picked by farthest-first traversal, in pick order; float64, ties -> lowest index."""
    f = feats.double()
    first = int(torch.argmin((f - f.mean(0)).pow(2).sum(1)))
    chosen = [first]
    mind = (f - f[first]).pow(2).sum(1)
    for _ in range(budget - 1):
        mind[chosen] = -1.0
        i = int(torch.argmax(mind))
        chosen.append(i)
        mind = torch.minimum(mind, (f - f[i]).pow(2).sum(1))
    return torch.tensor(chosen, dtype=torch.int64)


@register_method
class KCenter:
    info = MethodInfo("kcenter", "selection", "per-class k-center greedy on teacher embeddings", needs_teacher=True)

    @dataclass(frozen=True)
    class Config(Validated):
        pass

    def __init__(self, config: "KCenter.Config"):
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        return select_on_teacher_features(real, spec, log, kcenter_order)
