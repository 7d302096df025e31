"""Views: the augmented versions of a set's images that a student trains on, one per epoch,
drawn ahead of time so that a teacher can label each exact view (`--labels views`) or a loader
can redraw them (`--labels online`).

A view of sample i in epoch e is RDED's / SRe2L's training view (their validation and FKD
relabel code): a RandomResizedCrop of the image (box, resized back to H x W, antialiased), a
horizontal flip, then CutMix: a box of it replaced by the same box of a partner sample's own
view of that epoch (the partner's crop and flip; λ ~ Beta(α, α), the box as the reference's
`rand_bbox` draws it). The reference draws the partner as a permutation of each batch; here it
is drawn per sample among all samples, so a view depends on the sample and the epoch only, never
on batch size, worker count or shuffling.

A view is a record of the structured dtype `VIEW` (23 bytes): `box` (top, left, height, width)
of the crop in source pixels, `flip`, the partner's key as (`pclass`, `pslot`) (the sample key
`c{pclass:04d}-{pslot:05d}`; -1 for no mixing), `mbox` (top, left, height, width) of the mixed
region in view pixels, `lam` the Beta draw. Crops, flips and paste are done here with
torchvision's functional ops (`resized_crop`, `hflip`); drawing is ours because torchvision's
`RandomResizedCrop.get_params` and CutMix draw from the global RNG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import Validated, fraction, non_negative, positive

VIEW = np.dtype([("box", "<i2", (4,)), ("flip", "u1"), ("pclass", "<i2"), ("pslot", "<i2"), ("mbox", "<i2", (4,)),
                 ("lam", "<f2")])
MAX_VIEWS = 10_000            # views per image: beyond this, per-view labels cost more than any teacher


@dataclass(frozen=True)
class ViewConfig(Validated):
    """How views are drawn (`--label-set key=value`). `epochs`: views per image (E; 0 = the
    evaluation protocol's epoch count). `min_scale`/`max_scale`: the crop's share of the image
    area (RDED's `(1/factor, max_scale_crops)`; 0.5 is RDED's at factor 2, SRe2L's 0.08 leaves
    4-pixel crops of a 28-pixel image). `ratio`: aspect-ratio bounds of the crop. `flip`.
    `cutmix`: α of λ ~ Beta(α, α); 0 turns mixing off. `temperature`: the KL temperature the
    student trains at (RDED's and SRe2L's 20)."""

    epochs: int = non_negative(0)
    min_scale: float = fraction(0.5)
    max_scale: float = fraction(1.0)
    min_ratio: float = positive(3 / 4)
    max_ratio: float = positive(4 / 3)
    flip: bool = True
    cutmix: float = non_negative(1.0)
    temperature: float = positive(20.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..errors import UsageError

        if self.epochs > MAX_VIEWS:
            raise UsageError(f"--label-views must be at most {MAX_VIEWS}, got {self.epochs}", key="epochs")
        if self.min_scale > self.max_scale or self.min_ratio > self.max_ratio:
            raise UsageError("ViewConfig: min_scale/min_ratio must not exceed max_scale/max_ratio", key="min_scale")


def _crop_box(g: torch.Generator, h: int, w: int, cfg: ViewConfig) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from `g`: (top, left, height, width)."""
    area = h * w
    log_ratio = (math.log(cfg.min_ratio), math.log(cfg.max_ratio))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(cfg.min_scale, cfg.max_scale, generator=g).item()
        ratio = math.exp(torch.empty(1).uniform_(*log_ratio, generator=g).item())
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g).item())
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g).item())
            return top, left, ch, cw
    in_ratio = w / h                       # fallback: the centre crop, as torchvision's
    if in_ratio < cfg.min_ratio:
        cw, ch = w, int(round(w / cfg.min_ratio))
    elif in_ratio > cfg.max_ratio:
        ch, cw = h, int(round(h * cfg.max_ratio))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _mix_box(g: torch.Generator, lam: float, h: int, w: int) -> tuple[int, int, int, int]:
    """The reference's `rand_bbox`: a box of (1 - lam) of the area around a uniform centre, clipped."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(0, h, (1,), generator=g).item()), int(torch.randint(0, w, (1,), generator=g).item())
    y0, y1 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    x0, x1 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    return y0, x0, y1 - y0, x1 - x0


def draw(cfg: ViewConfig, g: torch.Generator, keys: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """One epoch's views of the samples with keys `keys` ((class, slot) each, in set order):
    a `VIEW` record per sample, drawn from `g` in set order."""
    h, w = shape
    out = np.zeros(len(keys), dtype=VIEW)
    for i in range(len(keys)):
        out["box"][i] = _crop_box(g, h, w, cfg)
        out["flip"][i] = int(cfg.flip and torch.rand(1, generator=g).item() < 0.5)
        if cfg.cutmix == 0 or len(keys) < 2:
            out["pclass"][i] = out["pslot"][i] = -1
            out["lam"][i] = 1.0
            continue
        p = int(torch.randint(0, len(keys), (1,), generator=g).item())
        lam = _beta(g, cfg.cutmix)
        out["pclass"][i], out["pslot"][i] = keys[p]
        out["mbox"][i] = _mix_box(g, lam, h, w)
        out["lam"][i] = lam
    return out


def _beta(g: torch.Generator, alpha: float) -> float:
    """λ ~ Beta(α, α) from `g` (as the ratio of two Gamma(α) draws)."""
    a = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64), generator=g)
    return float(a[0] / a.sum())


def base_views(images: torch.Tensor, rec: np.ndarray) -> torch.Tensor:
    """Crops (resized back to H x W, bilinear with antialias) and flips: [B, C, H, W] float
    images and their B records -> [B, C, H, W]."""
    from torchvision.transforms.v2 import functional as TF

    h, w = images.shape[-2:]
    out = torch.empty_like(images)
    for i in range(images.shape[0]):
        top, left, bh, bw = (int(v) for v in rec["box"][i])
        v = TF.resized_crop(images[i], top, left, bh, bw, [h, w], antialias=True)
        out[i] = TF.horizontal_flip(v) if rec["flip"][i] else v
    return out


def render(images: torch.Tensor, epoch_views: np.ndarray, index_of: dict[tuple[int, int], int],
           idx: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The views of samples `idx` in one epoch: each sample's base view with its `mbox` region
    taken from its partner's base view. `images` [N, C, H, W] is the whole set (partners can be
    any sample), `epoch_views` the epoch's N records, `index_of` maps a key (class, slot) to its
    row. KeyError for a partner key that is not in the set."""
    idx = np.asarray(idx, dtype=np.int64)
    rec = epoch_views[idx]
    x = base_views(images[torch.from_numpy(idx)], rec)
    mixed = np.flatnonzero(rec["pclass"] >= 0)
    if mixed.size:
        partners = np.array([index_of[(int(rec["pclass"][i]), int(rec["pslot"][i]))] for i in mixed], dtype=np.int64)
        px = base_views(images[torch.from_numpy(partners)], epoch_views[partners])
        for j, i in enumerate(mixed):
            top, left, bh, bw = (int(v) for v in rec["mbox"][i])
            x[i, :, top:top + bh, left:left + bw] = px[j, :, top:top + bh, left:left + bw]
    return x
