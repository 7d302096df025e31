"""K-Center greedy (Sener & Savarese 2018; the DC paper's coreset baseline): per class, start
from the sample nearest the class mean, then repeatedly add the sample farthest from the
selected set (Euclidean, teacher embeddings)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import MethodInfo, register_method
from ..train.teacher import get_teacher, teacher_features
from ..types import CompressedSet, LogFn, RealData, RunSpec
from .base import check_ipc, selection_result


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
    class Config:
        pass

    def __init__(self, config: "KCenter.Config"):
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, generator: torch.Generator, log: LogFn) -> CompressedSet:
        check_ipc(real, spec.ipc)
        teacher = get_teacher(real, spec, log=log)
        feats = teacher_features(teacher, real, spec.device)
        picks = []
        for c in range(real.num_classes):
            pool = real.class_indices(c)
            picks.append(pool[kcenter_order(feats[pool], spec.ipc)])
        return selection_result(real, picks, info={"features": "teacher_embedding", "feature_dim": feats.shape[1]})
