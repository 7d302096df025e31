"""Random resized crops drawn from an explicit generator (RDED's candidate crops, SRe2L's
augmentation): torchvision's `RandomResizedCrop.get_params` without the global RNG."""
from __future__ import annotations

import math

import torch


def crop_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
             g: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's `RandomResizedCrop.get_params` with draws from `g`: (top, left, height, width)
    of a crop with area in `scale` x image area and aspect ratio (w/h) log-uniform in `ratio`;
    10 tries, then the largest centred crop with a ratio in range."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(log_r[0], log_r[1], generator=g)))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return top, left, ch, cw
    if w / h < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif w / h > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw
