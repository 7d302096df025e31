"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML'21), methods.md §1.3.

The random parameters of an augmentation are drawn apart from their application:

    params = make_params(strategy, batch, (C, H, W), generator=g, siamese=True)
    x_real_aug = apply(x_real, params)     # any batch size when siamese
    x_syn_aug = apply(x_syn, params)       # the identical transform

That split *is* siamese mode: the reference instead re-seeds the global RNG with the same seed
before augmenting each batch and overwrites every sampled tensor with its first row. Non-siamese
parameters are per sample (one row per image) and apply only to a batch of that size.

Families (strategy = family names joined by '_'):
    color   brightness x + (u - 0.5)·b; saturation (x - mean_C)·(u·s) + mean_C (skipped on 1
            channel, where it is the identity); contrast (x - mean_CHW)·(u + c) + mean_CHW
    crop    integer translation by (dy, dx) in {-s..s}, s = int(H·0.125 + 0.5), zero fill
    cutout  a square of side int(H·0.5 + 0.5) zeroed at a random centre, clipped at the borders
    flip    horizontal flip with probability 0.5
    scale   sx, sy ~ U[1/1.2, 1.2] independently (affine_grid + grid_sample)
    rotate  θ ~ U[-15°, 15°] (affine_grid + grid_sample)
u ~ U[0, 1). Mode 'S' draws one family per call uniformly from the strategy list (the whole
batch gets that family); mode 'M' applies every family in order. Resampling uses bilinear
interpolation, zero padding and `align_corners=True` (as MTT; DC used the torch default False).

Randomness comes only from the `generator` argument (a CPU generator: numbers are drawn on the
CPU and then moved to the images' device, so CPU and CUDA runs draw the same parameters).
Everything in `apply` is differentiable in x. docs/augmentation.md has the details.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGIT_STRATEGY = "color_crop_cutout_scale_rotate"  # flip hurts digits (reference README)

# family -> its ops, applied in this order (reference AUGMENT_FNS)
FAMILIES: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",), "cutout": ("cutout",), "flip": ("flip",), "scale": ("scale",), "rotate": ("rotate",),
}


@dataclass(frozen=True)
class DSAConfig:
    """Augmentation strengths; defaults are the reference `ParamDiffAug`."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2       # sx, sy ~ U[1/r, r]
    ratio_rotate: float = 15.0     # degrees, θ ~ U[-r, r]
    ratio_crop_pad: float = 0.125  # max shift = int(H·r + 0.5) pixels
    ratio_cutout: float = 0.5      # square side = int(H·r + 0.5) pixels
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    mode: str = "S"                # 'S': one family per call; 'M': all families

    def __post_init__(self) -> None:
        if self.mode not in ("S", "M"):
            raise ValueError(f"DSA mode must be 'S' (one family per call) or 'M' (all), got {self.mode!r}")
        if self.ratio_scale < 1.0:
            raise ValueError(f"ratio_scale must be >= 1, got {self.ratio_scale}")
        if not 0.0 <= self.prob_flip <= 1.0:
            raise ValueError(f"prob_flip must be in [0, 1], got {self.prob_flip}")


@dataclass(frozen=True, eq=False)
class AugOp:
    """One drawn operation. `value` has one row per sample, or a single row when siamese.

    brightness [n] additive shift; saturation, contrast [n] factors; flip [n] bool;
    crop [n, 2] int64 (dy, dx): out[i, j] = x[i + dy, j + dx]; cutout [n, 4] int64
    (row0, col0, row1, col1) of the zeroed square, end-exclusive, unclipped;
    scale, rotate [n, 2, 3] float32 affine matrices (affine_grid convention).
    """

    name: str
    value: Tensor


@dataclass(frozen=True, eq=False)
class AugParams:
    """The parameters of one augmentation call.

    Attributes:
        families: families chosen (one in mode 'S'; empty = identity).
        ops: the operations, in application order.
        batch: batch size the parameters were drawn for (rows of each value unless siamese).
        image_shape: (C, H, W) they were drawn for; `apply` needs the same H, W.
        siamese: True when one parameter set serves every image of any batch.
    """

    families: tuple[str, ...]
    ops: tuple[AugOp, ...]
    batch: int
    image_shape: tuple[int, int, int]
    siamese: bool

    def to(self, device: torch.device | str) -> "AugParams":
        """The same parameters with every value on `device`."""
        ops = tuple(AugOp(op.name, op.value.to(device)) for op in self.ops)
        return AugParams(self.families, ops, self.batch, self.image_shape, self.siamese)

    def rows(self, part: slice) -> "AugParams":
        """The parameters of samples `part` of the batch (a torchrun rank's share, dist.BatchParallel);
        siamese parameters serve any batch and come back unchanged."""
        if self.siamese:
            return self
        ops = tuple(AugOp(op.name, op.value[part]) for op in self.ops)
        return AugParams(self.families, ops, len(range(self.batch)[part]), self.image_shape, self.siamese)


def parse_strategy(s: str | None) -> list[str]:
    """Family names of a strategy string, in order. None, '' and 'none' give [].

    Raises:
        ValueError: naming the first unknown family.
    """
    if s is None or s.strip().lower() in ("", "none"):
        return []
    names = s.strip().lower().split("_")
    for name in names:
        if name not in FAMILIES:
            raise ValueError(f"unknown DSA augmentation family {name!r} in strategy {s!r}; "
                             f"known families: {', '.join(FAMILIES)}")
    return names


# ----------------------------------------------------------------------------------------------
# Drawing parameters


def _draw_op(name: str, n: int, shape: tuple[int, int, int], cfg: DSAConfig, g: torch.Generator) -> Tensor:
    """Draws the value of op `name` for `n` samples (on the generator's device)."""
    _, h, w = shape
    dev = g.device

    def u(*size: int) -> Tensor:
        return torch.rand(*size, generator=g, device=dev)

    if name == "brightness":
        return (u(n) - 0.5) * cfg.brightness
    if name == "saturation":
        return u(n) * cfg.saturation
    if name == "contrast":
        return u(n) + cfg.contrast
    if name == "flip":
        return u(n) < cfg.prob_flip
    if name == "crop":
        sh, sw = int(h * cfg.ratio_crop_pad + 0.5), int(w * cfg.ratio_crop_pad + 0.5)
        dy = torch.randint(-sh, sh + 1, (n,), generator=g, device=dev)
        dx = torch.randint(-sw, sw + 1, (n,), generator=g, device=dev)
        return torch.stack([dy, dx], 1)
    if name == "cutout":
        ch, cw = int(h * cfg.ratio_cutout + 0.5), int(w * cfg.ratio_cutout + 0.5)
        # centre range as the reference: [0, H] for even sides, [0, H-1] for odd
        cy = torch.randint(0, h + 1 - ch % 2, (n,), generator=g, device=dev)
        cx = torch.randint(0, w + 1 - cw % 2, (n,), generator=g, device=dev)
        r0, c0 = cy - ch // 2, cx - cw // 2
        return torch.stack([r0, c0, r0 + ch, c0 + cw], 1)
    theta = torch.zeros(n, 2, 3, device=dev)
    if name == "scale":
        r = cfg.ratio_scale
        theta[:, 0, 0] = u(n) * (r - 1.0 / r) + 1.0 / r
        theta[:, 1, 1] = u(n) * (r - 1.0 / r) + 1.0 / r
        return theta
    if name == "rotate":
        angle = (u(n) - 0.5) * 2 * cfg.ratio_rotate / 180 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        return theta
    raise AssertionError(f"no DSA op {name!r}")


def make_params(strategy: str | None, batch: int, image_shape: tuple[int, int, int], *,
                generator: torch.Generator, siamese: bool = False, config: DSAConfig = DSAConfig(),
                device: torch.device | str | None = None) -> AugParams:
    """Draws the parameters of one augmentation call.

    Args:
        strategy: family names joined by '_' (e.g. DEFAULT_STRATEGY); empty/None = identity.
        batch: number of images (per-sample rows when not siamese).
        image_shape: (C, H, W) of the images.
        generator: the only source of randomness (a CPU generator recommended).
        siamese: one parameter set for the whole batch, reusable on batches of any size.
        config: augmentation strengths and mode.
        device: where the values are placed (default: CPU); `apply` moves them to x's device.

    Returns:
        AugParams for `apply`.
    """
    families = parse_strategy(strategy)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
    if families and config.mode == "S":
        pick = torch.randint(0, len(families), (1,), generator=generator, device=generator.device)
        families = [families[int(pick.item())]]
    n = 1 if siamese else int(batch)
    ops = tuple(AugOp(name, _draw_op(name, n, shape, config, generator).to(device or "cpu"))
                for fam in families for name in FAMILIES[fam])
    return AugParams(tuple(families), ops, int(batch), shape, bool(siamese))


# ----------------------------------------------------------------------------------------------
# Applying parameters (every function: x [B, C, H, W], v with 1 or B rows, on x's device)


def _per_image(v: Tensor, x: Tensor) -> Tensor:
    """[n] -> [n, 1, 1, 1] in x's dtype, broadcastable against x."""
    return v.to(x.dtype).view(-1, 1, 1, 1)


def _brightness(x: Tensor, v: Tensor) -> Tensor:
    return x + _per_image(v, x)


def _saturation(x: Tensor, v: Tensor) -> Tensor:
    if x.shape[1] == 1:  # the channel mean is the pixel itself: identity (methods.md §11 item 11)
        return x
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _per_image(v, x) + mean


def _contrast(x: Tensor, v: Tensor) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_image(v, x) + mean


def _flip(x: Tensor, v: Tensor) -> Tensor:
    from torchvision.transforms.v2 import functional as TF  # imported on first use (slow import)

    return torch.where(v.view(-1, 1, 1, 1), TF.horizontal_flip(x), x)


def _crop(x: Tensor, v: Tensor) -> Tensor:
    # out[i, j] = x[i + dy, j + dx], zero where that falls outside: two gathers and a mask.
    # (The reference indexes a permuted tensor, which fails on 1-channel inputs.)
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device) + v[:, :1]          # [n, H]
    cols = torch.arange(w, device=x.device) + v[:, 1:]          # [n, W]
    keep = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    out = torch.gather(x, 2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = torch.gather(out, 3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    return out * keep.to(x.dtype)


def _cutout(x: Tensor, v: Tensor) -> Tensor:
    h, w = x.shape[2:]
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_r = (rows >= v[:, 0:1]) & (rows < v[:, 2:3])             # [n, H]
    in_c = (cols >= v[:, 1:2]) & (cols < v[:, 3:4])             # [n, W]
    hole = in_r[:, None, :, None] & in_c[:, None, None, :]      # [n, 1, H, W]
    return x * (~hole).to(x.dtype)


def _affine(x: Tensor, v: Tensor) -> Tensor:
    b = x.shape[0]
    theta = v.to(x.dtype)
    if theta.shape[0] == 1:  # siamese: one grid, shared by every image
        grid = F.affine_grid(theta, [1, *x.shape[1:]], align_corners=True).expand(b, -1, -1, -1)
    else:
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


_APPLY = {"brightness": _brightness, "saturation": _saturation, "contrast": _contrast, "flip": _flip,
          "crop": _crop, "cutout": _cutout, "scale": _affine, "rotate": _affine}


def apply(x: Tensor, params: AugParams) -> Tensor:
    """Applies drawn parameters to a batch; differentiable in x.

    Args:
        x: [B, C, H, W] images (any float dtype/device). H, W must match `params.image_shape`;
            B must equal `params.batch` unless the parameters are siamese.
        params: from `make_params`.

    Returns:
        [B, C, H, W] augmented images (contiguous).
    """
    if x.dim() != 4:
        raise ValueError(f"DSA expects images [B, C, H, W], got shape {tuple(x.shape)}")
    if tuple(x.shape[2:]) != params.image_shape[1:]:
        raise ValueError(f"parameters were drawn for {params.image_shape[1]}x{params.image_shape[2]} images, "
                         f"got {x.shape[2]}x{x.shape[3]}")
    if not params.siamese and x.shape[0] != params.batch:
        raise ValueError(f"per-sample parameters were drawn for a batch of {params.batch}, got {x.shape[0]} "
                         f"images (use siamese=True to share one transform across batches)")
    for op in params.ops:
        x = _APPLY[op.name](x, op.value.to(x.device))
    return x.contiguous()


def augment(x: Tensor, strategy: str | None, *, generator: torch.Generator, siamese: bool = False,
            config: DSAConfig = DSAConfig()) -> Tensor:
    """`apply(x, make_params(...))` for one batch; x itself when the strategy is empty.

    Args:
        x: [B, C, H, W] images.
        strategy: family names joined by '_'; None/''/'none' = identity.
        generator: source of randomness.
        siamese: one transform for the whole batch (instead of one per image).
        config: augmentation strengths and mode.

    Returns:
        [B, C, H, W] augmented images.
    """
    if not parse_strategy(strategy):
        return x
    params = make_params(strategy, x.shape[0], tuple(x.shape[1:]), generator=generator, siamese=siamese,
                         config=config, device=x.device)
    return apply(x, params)
