"""SRe2L recover (Yin et al., NeurIPS'23) with the CDA curriculum (Yin & Shen, "Dataset
Distillation in Large Data Era", 2023), on a teacher trained here ("squeeze").

Images start as N(0, 1) noise (normalised space) and are optimised with Adam (betas 0.5, 0.9,
cosine lr without warm-up) against the frozen BatchNorm teacher: cross-entropy of the target
class plus `r_bn` x the per-layer BatchNorm statistic distance
`||running_var - var||_2 + ||running_mean - mean||_2` (the first BN layer weighted by
`first_bn_multiplier`), measured on a random-resized crop (scale [min_scale, max_scale], aspect
[3/4, 4/3], torchvision's defaults, same crop for the batch) + horizontal flip + random roll by up to `jitter` pixels. After each
step the pixels are clipped to the valid [0, 1] range in normalised units. As in the
reference, the batch whose statistics are matched is one image per class (all classes of IPC
slot s, `recover/data_synthesis.py`: one `ipc_id` per run); the slots are independent problems
solved side by side here (Adam is per element, so together = one after the other).

CDA (`cda=true`): the crop's lower scale bound starts at `max_scale` and falls to `min_scale` by
`cda_milestone` x iterations (`cda_mode` step / linear / cosine, `CDA/recover_cda_*.py`).

Relabel: the teacher's logits of the final images (one vector per image; the reference's FKD
per-crop, per-epoch labels are not stored, docs/methods/sre2l.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import Validated, fraction, non_negative, positive, unit_open
from ..core import CompressedSet, LogFn, RealData, RunSpec, pixel_range
from ..io.schema import EvalProtocol
from ..errors import UsageError
from ..registry import MethodInfo, register_method
from ..seeds import derive
from ..augment.crop import crop_box
from ..nets import has_batchnorm
from .base import check_ipc, init_images_by_class
from .loop import SynthesisLoop, project


def crop_lower_bound(it: int, total: int, min_scale: float, max_scale: float, cda: bool, mode: str,
                     milestone: float) -> float:
    """The RandomResizedCrop scale lower bound at iteration `it` (CDA's easy-to-hard schedule:
    from `max_scale` down to `min_scale` over the first `milestone` x `total` iterations)."""
    end = milestone * total
    if not cda or it >= end:
        return min_scale
    frac = it / end
    if mode == "step":
        return max_scale
    if mode == "linear":
        return min_scale + (max_scale - min_scale) * (1 - frac)
    return min_scale + (max_scale - min_scale) * (1 + math.cos(math.pi * frac)) / 2


class BNStats:
    """Forward hooks on every BatchNorm2d of the teacher: per group of `group` consecutive inputs,
    `||running_var - var||_2 + ||running_mean - mean||_2` of the layer's input (biased var),
    summed over groups; `loss(first)` weights the first layer by `first`."""

    def __init__(self, net: torch.nn.Module, group: int):
        self.group, self.values = group, []
        self.handles = [m.register_forward_hook(self._hook) for m in net.modules()
                        if isinstance(m, torch.nn.BatchNorm2d)]

    def _hook(self, module, inputs, output) -> None:
        x = inputs[0]
        x = x.reshape(-1, self.group, *x.shape[1:])                      # [groups, group, C, H, W]
        mean = x.mean(dim=(1, 3, 4))
        var = x.var(dim=(1, 3, 4), unbiased=False)
        self.values.append((torch.linalg.vector_norm(module.running_var - var, dim=1)
                            + torch.linalg.vector_norm(module.running_mean - mean, dim=1)).sum())

    def loss(self, first: float) -> torch.Tensor:
        vals, self.values = self.values, []
        return sum(v * (first if i == 0 else 1.0) for i, v in enumerate(vals))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """The reference's `get_image_prior_losses` L2 term (4 neighbour differences)."""
    return (torch.linalg.vector_norm(x[:, :, :, :-1] - x[:, :, :, 1:])
            + torch.linalg.vector_norm(x[:, :, :-1, :] - x[:, :, 1:, :])
            + torch.linalg.vector_norm(x[:, :, 1:, :-1] - x[:, :, :-1, 1:])
            + torch.linalg.vector_norm(x[:, :, :-1, :-1] - x[:, :, 1:, 1:]))


@register_method
class SRe2L:
    info = MethodInfo("sre2l", "synthesis", "SRe2L recover: BatchNorm-statistics + CE inversion of a BN teacher "
                      "(CDA curriculum with cda=true), teacher labels per view", needs_teacher=True,
                      needs_bn_teacher=True, default_labels="views", exact_form=True)

    @dataclass(frozen=True)
    class Config(Validated):
        iterations: int = non_negative(1000)  # --iteration (all recover scripts 1000; CDA 4000 on ImageNet)
        lr: float = positive(0.25)            # --lr of the CIFAR script (argparse default 0.1, CDA tiny 0.4)
        r_bn: float = non_negative(0.01)      # --r-bn of the CIFAR script (argparse default 0.05)
        first_bn_multiplier: float = non_negative(10.0)
        jitter: int = non_negative(4)         # --jitter for 32/64 px (ImageNet 32)
        beta1: float = unit_open(0.5)         # Adam betas [0.5, 0.9], eps 1e-8
        beta2: float = unit_open(0.9)
        min_scale: float = fraction(0.08)     # RandomResizedCrop scale range (torchvision default)
        max_scale: float = fraction(1.0)
        flip: bool = True                     # RandomHorizontalFlip
        cda: bool = False                     # CDA curriculum on the crop's lower bound
        cda_mode: Literal["step", "linear", "cosine"] = "cosine"   # --easy2hard-mode
        cda_milestone: float = fraction(1.0)  # --milestone: fraction of iterations the curriculum spans
        tv_l2: float = non_negative(0.0)      # ImageNet recover: 1e-4 (CIFAR/CDA scripts: unused)
        l2_scale: float = non_negative(0.0)   # ImageNet recover: 1e-5
        batch_size: int = positive(100)       # images per forward (whole IPC slots); memory only

    def __init__(self, config: "SRe2L.Config"):
        if config.min_scale > config.max_scale:
            raise UsageError(f"SRe2L: min_scale ({config.min_scale}) must be <= max_scale ({config.max_scale})",
                             key="min_scale")
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        from ..train.teacher import get_teacher

        cfg, ipc, n_cls = self.config, spec.ipc, real.num_classes
        check_ipc(real, 1)                     # noise init: no real image is needed beyond the labels
        teacher = get_teacher(real, spec, log=log)
        net = teacher.net.eval()
        if not has_batchnorm(net):
            raise UsageError(f"sre2l matches BatchNorm statistics, and the teacher "
                             f"({teacher.info.get('model')}, {teacher.info.get('path')}) has no BatchNorm layer; "
                             "train one with `dcompress teacher ... --bn` (or --teacher-set model=convnetbn_w32)",
                             key="teacher")
        for p in net.parameters():
            p.requires_grad_(False)
        _, h, w = real.image_shape
        bounds = pixel_range(real.mean, real.std)
        init, _ = init_images_by_class(real, range(n_cls), ipc, "noise", spec.seed, spec.device)
        images = init.clone().requires_grad_(True)                    # class-major [c * ipc + slot]
        opt = torch.optim.Adam([images], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
        per_step = max(1, cfg.batch_size // n_cls)                      # IPC slots per forward
        targets = torch.arange(n_cls, device=spec.device)
        hooks = BNStats(net, n_cls)
        loop = SynthesisLoop("sre2l", cfg.iterations, spec, log, state={"images": images, "optimizer": opt})
        try:
            for it in loop:
                for group in opt.param_groups:                         # lr_cosine_policy(lr, 0, iterations)
                    group["lr"] = 0.5 * (1 + math.cos(math.pi * it / cfg.iterations)) * cfg.lr
                scale_lo = crop_lower_bound(it, cfg.iterations, cfg.min_scale, cfg.max_scale, cfg.cda, cfg.cda_mode,
                                            cfg.cda_milestone)
                opt.zero_grad()
                total_ce = total_bn = 0.0
                for start in range(0, ipc, per_step):
                    slots = range(start, min(ipc, start + per_step))
                    views = images.view(n_cls, ipc, *images.shape[1:])
                    batch = torch.cat([self._augment(views[:, s], (h, w), scale_lo, derive(spec.seed, it, "sre2l", s))
                                       for s in slots])
                    out = net(batch)
                    ce = F.cross_entropy(out, targets.repeat(len(slots)), reduction="sum") / n_cls
                    bn = hooks.loss(cfg.first_bn_multiplier)
                    loss = ce + cfg.r_bn * bn
                    if cfg.tv_l2:
                        loss = loss + cfg.tv_l2 * tv_l2(batch)
                    if cfg.l2_scale:
                        loss = loss + cfg.l2_scale * torch.linalg.vector_norm(batch.flatten(1), dim=1).sum() / n_cls
                    loss.backward()
                    total_ce, total_bn = total_ce + float(ce.detach()), total_bn + float(bn.detach())
                opt.step()
                project(images, bounds)
                loop.done((total_ce + cfg.r_bn * total_bn) / ipc, ce=round(total_ce / ipc, 5),
                          bn=round(total_bn / ipc, 5))
        finally:
            hooks.close()
        final = images.detach()
        with torch.no_grad():
            logits = torch.cat([net(final[i:i + cfg.batch_size]).float().cpu()
                                for i in range(0, len(final), cfg.batch_size)])
        sources = [{"slot": i % ipc, "init": "noise"} for i in range(len(final))]
        info = {**loop.summary(), "cda": cfg.cda, "teacher": dict(teacher.info)}
        return CompressedSet(images=final.float().cpu().clone(), labels=torch.arange(n_cls).repeat_interleave(ipc),
                             logits=logits, label_kind="teacher", synthetic=True, sources=sources, info=info,
                             protocol=EvalProtocol(name="sre2l", epochs=300, aug=None, soft_labels=True))

    def _augment(self, x: torch.Tensor, size: tuple[int, int], scale_lo: float, g: torch.Generator) -> torch.Tensor:
        """One random resized crop (+ flip) for the whole batch, then a random roll (jitter)."""
        from torchvision.transforms.v2 import functional as TF

        cfg = self.config
        top, left, ch, cw = crop_box(size[0], size[1], (scale_lo, cfg.max_scale), (3 / 4, 4 / 3), g)
        x = TF.resized_crop(x, top, left, ch, cw, list(size), antialias=True)
        if cfg.flip and float(torch.rand(1, generator=g)) < 0.5:
            x = x.flip(-1)
        dy, dx = (int(v) for v in torch.randint(0, cfg.jitter + 1, (2,), generator=g))
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
