"""DATM — Difficulty-Aligned Trajectory Matching (Guo et al., ICLR'24; methods.md §7).

MTT's loop (mtt.py) with four changes:
  1. start epochs come from a window [min_start_epoch, upper) whose upper bound grows from
     current_max_start_epoch to max_start_epoch over expansion_end_epoch iterations
     ("sequential generation"; fixed at max_start_epoch when that is off);
  2. images start from real samples an expert's final-epoch network classifies correctly;
  3. labels are learned logits, initialised with the mean final-epoch logits of the experts
     that predict the true class, trained by SGD(lr_y, momentum_y); the inner loss is SoftCE;
  4. an iteration whose normalised loss exceeds `threshold` updates nothing (counted).

Differences from `DATM.py`: the label initialisation loops over the buffer's experts once,
bounded by `label_experts` (the reference indexes files[cur // 10 % 10][cur % 10], which
assumes at least 10 files of 10 experts); an image no expert classifies correctly gets the
mean logits of all experts instead of a division by zero; the learned lr stays positive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch

from ..config import non_negative, positive, unit_open
from ..errors import UsageError
from ..registry import MethodInfo, register_method
from ..core import CompressedSet
from ..io.schema import EvalProtocol
from ..seeds import derive
from .mtt import MTT

SCAN_BATCH = 256


def start_epoch_window(it: int, *, min_start_epoch: int, current_max_start_epoch: int, max_start_epoch: int,
                       expansion_end_epoch: int, sequential_generation: bool) -> tuple[int, int]:
    """[lo, hi) of the start epoch at iteration `it` (DATM's floating upper bound)."""
    if not sequential_generation:
        return min_start_epoch, max_start_epoch
    grow = int((max_start_epoch - current_max_start_epoch) * it / max(expansion_end_epoch, 1))
    return min_start_epoch, min(current_max_start_epoch + grow, max_start_epoch)


@torch.no_grad()
def correct_expert_logits(net: torch.nn.Module, thetas: Iterable[torch.Tensor], images: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean logits [M, K] over the experts (flat params `thetas`) whose prediction is the true
    label; rows no expert gets right fall back to the mean over all experts."""
    from ..nets.functional import forward_flat

    total = correct_sum = None
    count = torch.zeros(labels.numel(), device=images.device)
    n = 0
    for theta in thetas:
        out = torch.cat([forward_flat(net, theta, images[s:s + SCAN_BATCH])
                         for s in range(0, images.shape[0], SCAN_BATCH)])
        ok = (out.argmax(1) == labels).to(out.dtype)
        total = out if total is None else total + out
        correct_sum = out * ok[:, None] if correct_sum is None else correct_sum + out * ok[:, None]
        count += ok
        n += 1
    if n == 0:
        raise UsageError("soft-label initialisation needs at least one expert")
    none_right = count == 0
    logits = torch.where(none_right[:, None], total / n, correct_sum / count.clamp_min(1)[:, None])
    return logits, {"label_init_experts": n, "label_init_no_correct_expert": int(none_right.sum())}


@torch.no_grad()
def correctly_predicted_init(real, ipc: int, net, thetas: Iterable[torch.Tensor], seed: int,
                             device: torch.device) -> tuple[torch.Tensor, list[str], dict]:
    """Per class, the first `ipc` images of a random order that expert 0 classifies correctly
    (then expert 1, … for a class where it gets fewer right); padded with misclassified ones
    when all experts together find fewer than `ipc`. Class c's order comes from
    `derive(seed, "init", c)`, as every initialisation (`init_images_by_class`). Returns the
    images [C·ipc, ...] (class-major), their source keys and info."""
    from ..nets.functional import forward_flat

    picks, padded = [], 0
    for c in range(real.num_classes):
        pool = real.class_indices(c)
        pool = pool[torch.randperm(pool.numel(), generator=derive(seed, "init", c))]
        chosen: list[int] = []
        for theta in thetas:
            for s in range(0, pool.numel(), SCAN_BATCH):
                taken = set(chosen)
                cand = [int(i) for i in pool[s:s + SCAN_BATCH] if int(i) not in taken]
                if not cand:
                    continue
                pred = forward_flat(net, theta, real.get(torch.tensor(cand), device)).argmax(1).cpu()
                chosen += [i for i, p in zip(cand, pred.tolist()) if p == c][:ipc - len(chosen)]
                if len(chosen) == ipc:
                    break
            if len(chosen) == ipc:
                break
        if len(chosen) < ipc:
            taken = set(chosen)
            rest = [int(i) for i in pool if int(i) not in taken]
            padded += ipc - len(chosen)
            chosen += rest[:ipc - len(chosen)]
        picks.append(torch.tensor(chosen))
    idx = torch.cat(picks)
    return real.get(idx, device), [real.keys[int(i)] for i in idx], {"pix_init": "samples_predicted_correctly",
                                                                      "init_misclassified_padding": padded}


class _FinalThetas:
    """Final-epoch flat parameters of the first `n` experts, read (mmap) on first use."""

    def __init__(self, buf, n: int, device: torch.device):
        self.buf, self.n, self.device, self.cache = buf, n, device, {}

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for e in range(self.n):
            if e not in self.cache:
                if len(self.cache) >= 2:   # keep memory bounded during the one-pass label init
                    self.cache.pop(next(iter(self.cache)))
                self.cache[e] = self.buf.snapshot(e, self.buf.epochs).to(self.device)
            yield self.cache[e]


@register_method
class DATM(MTT):
    info = MethodInfo("datm", "synthesis", "difficulty-aligned trajectory matching with learned soft labels",
                      needs_experts=True, extras=("experts",), distributed=True, exact_form=True)

    @dataclass(frozen=True)
    class Config(MTT.Config):
        """Defaults = DATM `utils/cfg.py` (configs use iterations 10000, batch_syn set per IPC).
        `label_experts`: how many experts initialise the soft labels (None: all in the buffer)."""

        syn_steps: int = positive(80)
        expert_epochs: int = positive(2)
        pix_init: Literal["samples_predicted_correctly", "real", "noise"] = "samples_predicted_correctly"
        min_start_epoch: int = non_negative(0)
        current_max_start_epoch: int = non_negative(20)
        expansion_end_epoch: int = non_negative(3000)
        sequential_generation: bool = True
        lr_y: float = positive(2.0)
        momentum_y: float = unit_open(0.9)
        threshold: float = non_negative(1.0)
        label_experts: int | None = positive(None)

    def check_window(self, buf) -> None:
        super().check_window(buf)
        cfg = self.config
        lo, hi = start_epoch_window(0, min_start_epoch=cfg.min_start_epoch,
                                    current_max_start_epoch=cfg.current_max_start_epoch,
                                    max_start_epoch=cfg.max_start_epoch, expansion_end_epoch=cfg.expansion_end_epoch,
                                    sequential_generation=cfg.sequential_generation)
        if not 0 <= lo < hi:
            raise UsageError(f"empty start-epoch window [{lo}, {hi}) at iteration 0: need 0 <= min_start_epoch < "
                             "min(current_max_start_epoch, max_start_epoch)")

    def start_epoch(self, it: int, generator: torch.Generator) -> int:
        cfg = self.config
        lo, hi = start_epoch_window(it, min_start_epoch=cfg.min_start_epoch,
                                    current_max_start_epoch=cfg.current_max_start_epoch,
                                    max_start_epoch=cfg.max_start_epoch, expansion_end_epoch=cfg.expansion_end_epoch,
                                    sequential_generation=cfg.sequential_generation)
        return int(torch.randint(lo, hi, (1,), generator=generator))

    def _final_thetas(self, buf, limit: int | None, device) -> "_FinalThetas":
        return _FinalThetas(buf, buf.num_experts if limit is None else min(limit, buf.num_experts), device)

    def init_images(self, real, spec, buf, net):
        cfg = self.config
        if cfg.pix_init == "samples_predicted_correctly":
            thetas = self._final_thetas(buf, cfg.label_experts, spec.device)
            return correctly_predicted_init(real, spec.ipc, net, thetas, spec.seed, spec.device)
        return super().init_images(real, spec, buf, net)

    def init_targets(self, images, labels, buf, net):
        thetas = self._final_thetas(buf, self.config.label_experts, images.device)
        return correct_expert_logits(net, thetas, images, labels)

    def accept(self, loss: float) -> bool:
        return loss <= self.config.threshold

    def result(self, images, labels, soft, lr: float, info: dict, model: str, sources: list[dict]) -> CompressedSet:
        return CompressedSet(images=images, labels=labels, logits=soft, label_kind="learned", synthetic=True, lr=lr,
                             sources=sources,
                             info={**info, "threshold": self.config.threshold},
                             protocol=EvalProtocol(name="datm", model=model, epochs=1000, aug=self.eval_aug(),
                                                   soft_labels=True, use_learned_lr=True, batch_size=128))
