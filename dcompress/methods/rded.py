"""RDED: Realistic, Diverse and Efficient Dataset Distillation (Sun et al., CVPR'24).

No optimisation: per class, draw `mipc` real images, cut `num_crop` random square-ish crops from
each (RandomResizedCrop to 1/factor of the image side, scale in [min_scale, max_scale]), score
every crop by the teacher's cross-entropy of the true class on the crop zero-padded back to full
size, keep each image's best crop, take the `ipc * factor**2` best crops of the class, and stitch
them factor x factor into `ipc` images (the official `synthesize/utils.py`: `selector`,
`mix_images`). The images are relabelled with the teacher's logits (one vector per image).

Deviations from LINs-lab/RDED (docs/methods/rded.md): crops are quantised to 8 bits before
scoring and after stitching, so the stored PNG is exactly the image that was scored and labelled
(no .npy); a class with fewer than `ipc * factor**2` drawn images fills the rest with its images'
second-best crops (the reference fails); randomness from derived generators per class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import Validated, fraction, non_negative, positive
from ..core import CompressedSet, LogFn, RealData, RunSpec, normalize
from ..io.schema import EvalProtocol
from ..errors import InputDataError, UsageError
from ..registry import MethodInfo, register_method
from ..seeds import derive
from .base import check_ipc, class_labels
from ..augment.crop import crop_box


def random_crops(u8: torch.Tensor, n: int, size: tuple[int, int], scale: tuple[float, float],
                 g: torch.Generator) -> torch.Tensor:
    """`n` random resized crops of each uint8 image [B, C, H, W] -> uint8 [n, B, C, *size]
    (crop j of every image first: the reference's `MultiRandomCrop` order), bilinear with antialias."""
    from torchvision.transforms.v2 import functional as TF

    b, _, h, w = u8.shape
    ratio = size[1] / size[0]
    out = torch.empty((n, b, u8.shape[1], *size), dtype=torch.uint8)
    for i in range(b):
        for j in range(n):
            top, left, ch, cw = crop_box(h, w, scale, (ratio, ratio), g)
            out[j, i] = TF.resized_crop(u8[i], top, left, ch, cw, list(size), antialias=True)
    return out


def auto_factor(h: int, w: int) -> int:
    """The reference scripts' factor: 1 for CIFAR/Tiny-ImageNet (32, 64 px), 2 for 128/224 px."""
    return 1 if max(h, w) <= 64 else 2


def region_sizes(side: int, factor: int) -> list[int]:
    """The reference's split of a side into `factor` parts: the first `side % factor` get one more."""
    s, rem = divmod(side, factor)
    return [s + 1 if i < rem else s for i in range(factor)]


def stitch(patches: torch.Tensor, factor: int, ipc: int, h: int, w: int) -> torch.Tensor:
    """`mix_images`: patches [ipc*factor**2, C, ph, pw] -> images [ipc, C, h, w]; region k (row
    major) of image i is patch k*ipc + i, resized (nearest) to the region when sizes differ."""
    out = torch.zeros((ipc, patches.shape[1], h, w), dtype=patches.dtype)
    k, top = 0, 0
    for rh in region_sizes(h, factor):
        left = 0
        for rw in region_sizes(w, factor):
            part = patches[k * ipc:(k + 1) * ipc]
            if tuple(part.shape[-2:]) != (rh, rw):
                part = F.interpolate(part.float(), size=(rh, rw)).round().to(patches.dtype)
            out[:, :, top:top + rh, left:left + rw] = part
            left += rw
            k += 1
        top += rh
    return out


def pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zero padding (the normalised mean) around the crop, centred: the reference's `pad`."""
    dv, dh = h - x.shape[-2], w - x.shape[-1]
    return F.pad(x, (dh // 2, dh - dh // 2, dv // 2, dv - dv // 2))


@register_method
class RDED:
    info = MethodInfo("rded", "synthesis", "RDED: teacher-scored real crops stitched factor x factor, teacher "
                      "labels per view; no optimisation", needs_teacher=True, default_labels="views")

    @dataclass(frozen=True)
    class Config(Validated):
        # factor x factor crops per image; 0: by resolution as the reference's scripts (1 up to
        # 64 px a side: CIFAR, Tiny-ImageNet; 2 above)
        factor: int = non_negative(0, ">= 0 (0: by resolution)")
        num_crop: int = positive(5)                # candidate crops per drawn image (scripts --num-crop 5)
        mipc: int = positive(300)                  # real images drawn per class (scripts --mipc 300; argument.py 600)
        min_scale_crops: float = fraction(0.08)    # RandomResizedCrop scale range (--min/max-scale-crops)
        max_scale_crops: float = fraction(1.0)
        batch_size: int = positive(500)            # teacher forward batch (memory only; results do not depend on it)

    def __init__(self, config: "RDED.Config"):
        if config.min_scale_crops > config.max_scale_crops:
            raise UsageError(f"RDED: min_scale_crops ({config.min_scale_crops}) must be <= max_scale_crops "
                             f"({config.max_scale_crops})", key="min_scale_crops")
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        from ..train.teacher import get_teacher

        cfg, ipc = self.config, spec.ipc
        check_ipc(real, ipc)
        _, h, w = real.image_shape
        factor = cfg.factor or auto_factor(h, w)
        if factor > min(h, w):
            raise UsageError(f"RDED: factor {factor} exceeds the image side ({h}x{w})", key="factor")
        need = ipc * factor ** 2
        teacher = get_teacher(real, spec, log=log)
        images, sources, scores = [], [], []
        for c in range(real.num_classes):
            u8, src, ce = self._class_images(real, c, factor, teacher.net, spec, derive(spec.seed, "rded", c))
            images.append(u8)
            sources += [{"slot": i, "crops": src[i::ipc]} for i in range(ipc)]
            scores.append(ce)
            if spec.progress is not None:
                spec.progress(c + 1, real.num_classes, "rded")
        x = normalize(torch.cat(images), real.mean, real.std)
        logits = _batched(teacher.net, x, cfg.batch_size, spec.device)
        ce = torch.cat(scores)
        log({"event": "note", "text": f"rded: {len(x)} images from {need} crops per class; mean crop "
                                      f"cross-entropy {float(ce.mean()):.4f}"})
        info = {"factor": factor, "num_crop": cfg.num_crop, "mipc": cfg.mipc, "crops_per_image": factor ** 2,
                "mean_crop_ce": round(float(ce.mean()), 6), "teacher": {k: v for k, v in teacher.info.items()}}
        return CompressedSet(images=x, labels=class_labels(real.num_classes, ipc), logits=logits, label_kind="teacher",
                             synthetic=False, sources=sources, info=info,
                             protocol=EvalProtocol(name="rded", epochs=300, aug=None, soft_labels=True))

    def _class_images(self, real: RealData, c: int, factor: int, net: torch.nn.Module, spec: RunSpec,
                      g: torch.Generator) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Class `c`'s stitched uint8 images [ipc, C, H, W], the source key of each used crop (in
        stitch order), and the used crops' cross-entropies."""
        cfg, need = self.config, spec.ipc * factor ** 2
        pool = real.class_indices(c)
        idx = pool[torch.randperm(pool.numel(), generator=g)[:cfg.mipc]]
        if idx.numel() * cfg.num_crop < need:
            raise InputDataError(f"RDED: class {c} ({real.class_names[c]!r}) gives {idx.numel()} images x "
                                 f"{cfg.num_crop} crops, fewer than the {need} crops IPC {spec.ipc} x factor "
                                 f"{factor}^2 needs")
        _, h, w = real.image_shape
        size = (h // factor, w // factor)
        crops = random_crops(real.get_u8(idx), cfg.num_crop, size, (cfg.min_scale_crops, cfg.max_scale_crops), g)
        m, b = crops.shape[:2]
        flat = normalize(crops.reshape(m * b, *crops.shape[2:]), real.mean, real.std)
        preds = _batched(net, pad_to(flat, h, w), cfg.batch_size, spec.device)
        ce = F.cross_entropy(preds, torch.full((m * b,), c, dtype=torch.int64), reduction="none").reshape(m, b)
        # each image's crops ranked by its own score; the best crop of every image comes before
        # any second-best (the reference keeps only the best); within a rank, lowest loss first
        rank_in_image = ce.argsort(dim=0, stable=True).argsort(dim=0, stable=True)
        order = sorted(range(m * b), key=lambda k: (int(rank_in_image.view(-1)[k]), float(ce.view(-1)[k]), k))[:need]
        picked = torch.tensor(order)
        patches = crops.reshape(m * b, *crops.shape[2:])[picked]
        keys = [real.keys[int(idx[k % b])] for k in order]
        return stitch(patches, factor, spec.ipc, h, w), keys, ce.view(-1)[picked]


@torch.no_grad()
def _batched(net: torch.nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Eval-mode logits of `x` in batches, on the CPU."""
    net.eval()
    return torch.cat([net(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
