"""Small shared pieces of the methods: selection results, real-image initialisation."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import InputDataError
from ..core import CompressedSet, LogFn, RealData, RunSpec


def check_ipc(real: RealData, ipc: int) -> None:
    """InputDataError naming the class when a class has fewer than `ipc` images."""
    if ipc < 1:
        raise InputDataError(f"--ipc must be >= 1, got {ipc}")
    for c, n in enumerate(real.class_counts()):
        if n < ipc:
            raise InputDataError(f"class {c} ({real.class_names[c]!r}) has {n} images, fewer than --ipc {ipc}")


def selection_result(real: RealData, indices: list[torch.Tensor], info: dict | None = None,
                     extra: list[dict] | None = None) -> CompressedSet:
    """A CompressedSet of real samples: `indices[c]` are the picks of class c, in pick order."""
    idx = torch.cat([torch.as_tensor(i, dtype=torch.int64) for i in indices])
    sources = [{"source_key": real.keys[int(i)], "source_index": int(i)} for i in idx]
    if extra is not None:
        for s, e in zip(sources, extra):
            s.update(e)
    return CompressedSet(images=real.get(idx), labels=real.labels[idx].clone(), synthetic=False,
                         sources=sources, info=info or {})


def real_init(real: RealData, ipc: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Class-balanced random real images [C*ipc, ch, H, W] (normalised), class-major order."""
    idx = torch.cat([real.sample_class(c, ipc, generator) for c in range(real.num_classes)])
    return real.get(idx, device)


def noise_init(real: RealData, ipc: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    c, h, w = real.image_shape
    return torch.randn(real.num_classes * ipc, c, h, w, generator=generator).to(device)


def class_labels(num_classes: int, ipc: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(ipc)


def select_on_teacher_features(real: RealData, spec: RunSpec, log: LogFn,
                               order: Callable[[torch.Tensor, int], torch.Tensor]) -> CompressedSet:
    """Per class, `order(class embeddings, ipc)` picks indices on the teacher's penultimate
    embeddings (herding, k-center): the shared body of the embedding-greedy baselines."""
    from ..train.teacher import get_teacher, teacher_features

    check_ipc(real, spec.ipc)
    feats = teacher_features(get_teacher(real, spec, log=log), real, spec.device, log=log)
    picks = []
    for c in range(real.num_classes):
        pool = real.class_indices(c)
        picks.append(pool[order(feats[pool], spec.ipc)])
    return selection_result(real, picks, info={"features": "teacher_embedding", "feature_dim": feats.shape[1]})
