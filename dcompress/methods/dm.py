"""DM — Distribution Matching (Zhao & Bilen, WACV'23; reference `main_DM.py`, methods.md §5).

Each iteration samples a fresh random network with frozen parameters and moves the synthetic
images so that, class by class, the mean penultimate embedding of the synthetic images matches
that of a real batch (both under one shared Siamese DSA draw per class):

    loss = Σ_c ‖ mean_i f(A_c(x_real,i)) − mean_j f(A_c(x_syn,j)) ‖²        (sum of squares)

followed by one SGD(lr_img, momentum 0.5) step on all images jointly. No network training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .. import dist
from ..augment import dsa
from ..config import Validated, non_negative, positive, unit_open
from ..errors import UsageError
from ..nets import build_net, embed, has_batchnorm
from ..registry import MethodInfo, register_method
from ..core import CompressedSet, LogFn, RealData, RunSpec
from ..io.schema import EvalProtocol
from ..seeds import derive
from .base import (ClassDraw, check_ipc, draw_class, eval_model_for, init_images_by_class,
                   parse_strategy_or_usage, synthesis_result)
from .loop import SynthesisLoop


def _aug(x: torch.Tensor, params) -> torch.Tensor:
    return x if params is None else dsa.apply(x, params)


def dm_loss_per_class(net: torch.nn.Module, real: RealData, images: torch.Tensor, ipc: int,
                      draws: list[ClassDraw], *, backward: bool = True, terms: list | None = None) -> float:
    """Reference form: one real and one synthetic forward per class.

    With `backward`, each class's term is back-propagated at once (gradients add up in
    `images.grad`), so only one class's graph is alive at a time. Returns the total loss;
    `terms` (a list) receives each class's term (see `dm_loss`).
    """
    device = images.device
    total = torch.zeros((), device=device)
    for c, d in enumerate(draws):
        with torch.no_grad():
            mean_real = embed(net, _aug(real.get(d.real_idx, device), d.aug)).mean(0)
        mean_syn = embed(net, _aug(images[c * ipc:(c + 1) * ipc], d.aug)).mean(0)
        loss_c = ((mean_real - mean_syn) ** 2).sum()
        if backward:
            loss_c.backward()
        if terms is not None:
            terms.append(loss_c.detach())
        total += loss_c.detach()
    return float(total)          # one device sync per iteration


def dm_loss_batched(net: torch.nn.Module, real: RealData, images: torch.Tensor, ipc: int,
                    draws: list[ClassDraw], *, backward: bool = True, terms: list | None = None) -> float:
    """All classes in one real forward and one synthetic forward (the reference's BN branch).

    Same loss and gradient as `dm_loss_per_class` for nets without batch statistics; for BN nets
    it is the reference's behaviour (statistics mixed across classes). `terms` (a list) receives
    the per-class squared differences [classes, D] (see `dm_loss`).
    """
    device = images.device
    num_classes = len(draws)
    with torch.no_grad():
        fr = embed(net, torch.cat([_aug(real.get(d.real_idx, device), d.aug) for d in draws]))
        mean_real = fr.reshape(num_classes, -1, fr.shape[-1]).mean(1)
    xs = torch.cat([_aug(images[c * ipc:(c + 1) * ipc], d.aug) for c, d in enumerate(draws)])
    fs = embed(net, xs)
    mean_syn = fs.reshape(num_classes, ipc, fs.shape[-1]).mean(1)
    sq = (mean_real - mean_syn) ** 2
    if terms is not None:
        terms.append(sq.detach())
    loss = sq.sum()
    if backward:
        loss.backward()
    return float(loss.detach())


def dm_loss_slots(net: torch.nn.Module, real: RealData, images: torch.Tensor, draws: dict[int, ClassDraw],
                  split: dist.ClassSplit) -> float:
    """DM's loss with image slots split over the ranks (`split.slots`: more ranks than classes);
    back-propagated into this rank's rows; returns the one-process loss.

    A class's loss needs the mean embedding of all its slots and of its whole real batch, so
    the ranks sharing class c each embed their slots and their block of the real batch (the
    class's draws are the same on every rank: `derive(seed, it, c)`), and one all-reduce of
    the per-class embedding sums ([classes, 2, D] floats) gives every rank both means. Each rank
    then back-propagates ∂L/∂(slot sum of c) = −2 (mean_real − mean_syn) / ipc into its
    own slots. Same loss and gradients as one process up to the order of float additions.
    """
    device, ipc = images.device, split.ipc
    sums, mine, counts = None, {}, torch.zeros(split.num_classes, dtype=torch.float64)
    for c, d in draws.items():
        fs = embed(net, _aug(images[split.rows_of(c)], d.aug)).sum(0)
        with torch.no_grad():
            idx = d.real_idx[split.real_part(c, d.real_idx.numel())]
            fr = embed(net, _aug(real.get(idx, device), d.aug)).sum(0) if idx.numel() else torch.zeros_like(fs)
        if sums is None:
            sums = torch.zeros(split.num_classes, 2, fs.shape[-1], device=device)
        sums[c, 0] += fr
        sums[c, 1] += fs.detach()
        if split.counts(c):                    # each class's real batch size, counted once
            counts[c] = d.real_idx.numel()
        mine[c] = fs
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(counts)
    diff = sums[:, 0] / counts.to(sums.dtype)[:, None] - sums[:, 1] / ipc
    local = sum((-2 / ipc * diff[c]).detach().mul(fs).sum() for c, fs in mine.items())
    local.backward()
    return float((diff ** 2).sum())


def dm_loss(net: torch.nn.Module, real: RealData, images: torch.Tensor, draws: dict[int, ClassDraw],
            split: dist.ClassSplit, batched: bool) -> float:
    """Σ_c ‖mean f(A_c(real_c)) − mean f(A_c(S_c))‖² over this rank's classes `draws` (class ->
    its draws), back-propagated into `images.grad`; returns the one-process loss (under torchrun,
    summed from every rank's class terms as one process sums them: the same bits)."""
    if split.slots:
        return dm_loss_slots(net, real, images, draws, split)
    terms: list[torch.Tensor] = []
    form = dm_loss_batched if batched else dm_loss_per_class
    local = form(net, real, images, split.ipc, list(draws.values()), terms=terms)
    return split.loss(local, terms[0] if batched else terms)


def frozen_net(model: str, real: RealData, generator: torch.Generator, device: torch.device) -> torch.nn.Module:
    """A fresh random network in train mode with all parameters frozen."""
    ch, h, w = real.image_shape
    net = build_net(model, ch, real.num_classes, (h, w), generator=generator).to(device)
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@register_method
class DM:
    info = MethodInfo("dm", "synthesis", "distribution matching: class-mean embeddings of random nets (Zhao & Bilen 2023)",
                      distributed=True, exact_form=True)   # classes (or image slots) over the ranks: dist.ClassSplit

    @dataclass(frozen=True)
    class Config(Validated):
        """Defaults = reference `main_DM.py` (methods.md §5).

        iterations: image updates (reference `Iteration`).
        lr_img: SGD lr on the pixels (reference 1.0; README uses 10 for CIFAR-10 ipc >= 100).
        momentum: SGD momentum on the pixels (reference hard-codes 0.5).
        batch_real: real images per class per iteration.
        pix_init: 'real' (class-balanced real images) or 'noise' (N(0,1) normalised).
        dsa_strategy: Siamese DSA strategy ('none' disables); drop 'flip' for digits.
        model: random embedding network (dcompress.nets name).
        batched: one forward over all classes (True) or one per class (False); None = per-class
            on CPU, batched on CUDA. BN models always use the batched form (reference).
        """

        iterations: int = non_negative(20000)
        lr_img: float = positive(1.0)
        momentum: float = unit_open(0.5)
        batch_real: int = positive(256)
        pix_init: Literal["real", "noise"] = "real"
        dsa_strategy: str | None = dsa.DEFAULT_STRATEGY
        model: str = "convnet"
        batched: bool | None = None

    def __init__(self, config: "DM.Config"):
        self.config = config
        self.strategy = parse_strategy_or_usage(config.dsa_strategy)

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        """Every draw is derived from (seed, iteration[, class]): the network of iteration `it` from
        `derive(seed, it, "net")`, class c's real batch and Siamese DSA draw from
        `derive(seed, it, c)`. DM's loss is a sum of per-class terms and its SGD step is
        element-wise, so a class's images do not depend on which other classes run beside it:
        under torchrun each rank optimises its classes' rows (or, with more ranks than classes,
        its image slots; `dist.ClassSplit`) and the rows are gathered at the end."""
        cfg, ipc, device = self.config, spec.ipc, torch.device(spec.device)
        check_ipc(real, ipc)
        split = dist.ClassSplit(real.num_classes, ipc, "dm")
        images, init_keys = split.initial(
            lambda classes: init_images_by_class(real, classes, ipc, cfg.pix_init, spec.seed, device))
        images.requires_grad_(True)
        opt = torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum)
        loop = SynthesisLoop("dm", cfg.iterations, spec, log, state={"images": images, "optimizer": opt},
                             shard=split.shard)
        batched = not split.slots and (cfg.batched if cfg.batched is not None else device.type == "cuda")
        for it in loop:
            net = frozen_net(cfg.model, real, derive(spec.seed, it, "net"), device)
            if has_batchnorm(net):
                batched = self.batchnorm_form(split)
            draws = {c: draw_class(real, c, cfg.batch_real, self.strategy, derive(spec.seed, it, c), device)
                     for c in split.classes}
            opt.zero_grad(set_to_none=True)
            loss = dm_loss(net, real, images, draws, split, batched)
            opt.step()
            loop.done(loss)
        info = {"pix_init": cfg.pix_init, "batched": batched, **split.info(), **loop.summary()}
        protocol = EvalProtocol(name="dm", model=eval_model_for(self.config.model), epochs=1000, aug=self.strategy)
        return synthesis_result(split.gather(images), real, ipc, split.gather_keys(init_keys), protocol, info)

    def batchnorm_form(self, split: dist.ClassSplit) -> bool:
        """The loss form of a BatchNorm network (batched: the reference mixes the statistics of
        all classes in one forward); UsageError where that is impossible."""
        if split.world > 1:
            raise UsageError("dm: a BatchNorm model mixes the statistics of all classes, so it does not "
                             "split over processes; run it as one process (or use a model without BN)")
        if self.config.batched is False:
            raise UsageError("dm: batched=false is not possible with a BatchNorm model; the reference "
                             "concatenates all classes for BN nets (leave batched unset)")
        return True
