"""Raw labels -> class indices and class names (the input manifest's names, else "0".."C-1")."""
from __future__ import annotations

import torch

from ..errors import InputDataError
from .urls import ResolvedInput


def assign_classes(raw: list[int], keys: list[str], inp: ResolvedInput) -> tuple[torch.Tensor, list[str]]:
    """Raw labels (one per kept sample, in order) -> (int64 class indices, class names).

    Class names come from the input manifest when it has them, else are "0".."C-1"."""
    labels = torch.tensor(raw, dtype=torch.int64)
    return labels, _class_names(inp, labels, keys)


def _class_names(inp: ResolvedInput, labels: torch.Tensor, keys: list[str]) -> list[str]:
    names = None
    if inp.manifest is not None:
        names = inp.manifest.get("dcompress", {}).get("class_names")
    if labels.min() < 0:
        i = int(torch.argmin(labels))
        raise InputDataError(f"negative label {int(labels[i])}", key=keys[i])
    if names is None:
        n = int(labels.max()) + 1
        if n > labels.numel():
            i = int(torch.argmax(labels))
            raise InputDataError(f"labels imply {n} classes but there are only {labels.numel()} samples; "
                                 "labels must be class indices 0..C-1 (or give an input manifest with "
                                 "class_names)", key=keys[i])
        return [str(i) for i in range(n)]
    bad = (labels >= len(names)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise InputDataError(f"label {int(labels[i])} outside the class list of {len(names)} classes "
                             f"in the input manifest", key=keys[i])
    return list(names)
