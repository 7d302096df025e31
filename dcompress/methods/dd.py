"""DD — Dataset Distillation (Wang et al., 2018; methods.md §2).

Learned: the synthetic images and one lr per inner step. Each outer iteration draws a fresh
network θ0, trains it for T = distill_steps × distill_epochs differentiable SGD steps (step i
uses synthetic batch i mod distill_steps and lr softplus(raw_i)), measures CE of θ_T on a real
batch, and back-propagates through all T steps (`train.unroll`, memory mode as MTT) into the
pixels and the raw lrs (Adam 0.01, betas (0.5, 0.999), halved every `decay_epochs` epochs).

`--ipc` is the number of images per class in total: they are split over `distill_steps` steps
of ipc / distill_steps images per class each (the reference's distilled_images_per_class_per_step;
its default, 10 steps × 1, is `--ipc 10`). `distill_steps` None = the largest divisor of ipc
that is at most 10. Slot j of a class belongs to step j // (ipc / distill_steps).

`net_init="xavier"` (the reference's default) draws conv/linear weights xavier-normal (gain 1) with
zero biases, other parameters as the network's default; `net_init="default"` keeps the network's
own initialisation. DD's own evaluation re-runs the learned steps on fresh networks
(`train.replay.replay_accuracy`). The manifest's eval protocol is the common one (300 epochs, no aug).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .. import dist
from ..config import Validated, fraction, non_negative, positive, unit_open
from ..errors import UsageError
from ..registry import MethodInfo, register_method
from ..train.replay import fresh_params
from ..train.unroll import pick_memory_mode, unroll
from ..core import CompressedSet, LogFn, RealData, RunSpec
from ..io.schema import EvalProtocol
from ..nets import has_batchnorm
from .base import check_ipc, class_labels, init_images_by_class, slot_sources
from ..seeds import derive
from .loop import SynthesisLoop


def resolve_steps(ipc: int, distill_steps: int | None) -> int:
    if distill_steps is None:
        return max(d for d in range(1, min(ipc, 10) + 1) if ipc % d == 0)
    if distill_steps < 1 or ipc % distill_steps:
        raise UsageError(f"DD splits the --ipc {ipc} images per class over distill_steps steps; "
                         f"distill_steps={distill_steps} does not divide it (e.g. --set distill_steps=1)")
    return distill_steps


def step_batches(num_classes: int, ipc: int, steps: int) -> list[torch.Tensor]:
    """Indices (into the class-major set, class c slot j at c*ipc + j) of each step's batch."""
    per = ipc // steps
    return [torch.tensor([c * ipc + j for c in range(num_classes) for j in range(s * per, (s + 1) * per)])
            for s in range(steps)]


def softplus_inv(y: float) -> float:
    return math.log(math.expm1(y))


@register_method
class DD:
    info = MethodInfo("dd", "synthesis", "dataset distillation: unrolled steps with learned per-step lrs",
                      distributed=True, exact_form=True)   # each step's batch and the real batch over the ranks: dist.BatchParallel

    @dataclass(frozen=True)
    class Config(Validated):
        """Defaults = DD `base_options.py` (LeNet, 10 steps x 3 epochs, lr init 0.02, Adam 0.01,
        400 epochs of batch 1024, StepLR 40 x0.5). `iterations` caps the outer steps (None: epochs
        x batches per epoch). `n_nets`: fresh networks averaged per outer step (sample_n_nets)."""

        model: str = "lenet"
        distill_steps: int | None = positive(None)
        distill_epochs: int = positive(3)
        distill_lr: float = positive(0.02)
        lr: float = positive(0.01)
        beta1: float = unit_open(0.5)
        epochs: int = positive(400)
        iterations: int | None = non_negative(None)
        batch_real: int = positive(1024)
        decay_epochs: int = positive(40)
        decay_factor: float = fraction(0.5)
        n_nets: int = positive(1)
        net_init: Literal["xavier", "default"] = "xavier"
        pix_init: Literal["noise", "real"] = "noise"
        memory: Literal["auto", "full", "constant", "tesla"] = "auto"

    def __init__(self, config):
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        from ..nets import build_net
        from ..nets.functional import forward_flat

        cfg, dev = self.config, spec.device
        check_ipc(real, spec.ipc)
        steps = resolve_steps(spec.ipc, cfg.distill_steps)
        T = steps * cfg.distill_epochs
        shape, K = real.image_shape, real.num_classes
        net = build_net(cfg.model, shape[0], K, shape[1:], generator=torch.Generator().manual_seed(0)).to(dev)
        # torchrun: every rank holds all images and the same θ trajectory, and computes the gradient
        # of its block of each step's batch (summed over ranks) and the outer loss of its block of
        # the real batch (its share; the shares add up to the loss): dist.BatchParallel
        parallel = dist.batch_parallel("dd", has_batchnorm(net))
        labels = class_labels(K, spec.ipc).to(dev)
        batches = [b.to(dev) for b in step_batches(K, spec.ipc, steps)]
        if parallel.active:
            parts = [b[parallel.part(b.numel())] for b in batches]
            weights = [p.numel() / b.numel() for p, b in zip(parts, batches)]
            batches = parts
        per_epoch = math.ceil(len(real) / cfg.batch_real)
        total = cfg.epochs * per_epoch if cfg.iterations is None else min(cfg.iterations, cfg.epochs * per_epoch)
        images, init_keys = init_images_by_class(real, range(K), spec.ipc, cfg.pix_init, spec.seed, dev)
        images.requires_grad_(True)
        raw = torch.full((T,), softplus_inv(cfg.distill_lr), device=dev).requires_grad_(True)
        opt = torch.optim.Adam([images, raw], lr=cfg.lr, betas=(cfg.beta1, 0.999))
        loop = SynthesisLoop("dd", total, spec, log, state={"images": images, "raw": raw, "opt": opt},
                             extra={"mode": None, "info": {}})
        ex = loop.extra

        def inner(theta: torch.Tensor, i: int) -> torch.Tensor:
            b = batches[i % steps]
            if not parallel.active:
                return F.cross_entropy(forward_flat(net, theta, images[b]), labels[b])
            if b.numel() == 0:                     # a step batch smaller than the world: no share here
                return parallel.no_share(theta)
            return F.cross_entropy(forward_flat(net, theta, images[b]), labels[b]) * weights[i % steps]

        def lr_fn(i: int) -> torch.Tensor:
            return F.softplus(raw[i])

        for it in loop:
            epoch, pos = divmod(it, per_epoch)
            perm = torch.randperm(len(real), generator=derive(spec.seed, "epoch", epoch))   # real-data order
            g = derive(spec.seed, it)                                                      # this step's nets
            for group in opt.param_groups:   # StepLR(decay_epochs, decay_factor) over real-data epochs
                group["lr"] = cfg.lr * cfg.decay_factor ** (epoch // cfg.decay_epochs)
            ridx = perm[pos * cfg.batch_real:(pos + 1) * cfg.batch_real]
            share = 1.0
            if parallel.active:                        # this rank reads and scores its block of the batch
                n_real = ridx.numel()
                ridx = ridx[parallel.part(n_real)]
                share = ridx.numel() / n_real
            x_real = real.get(ridx, dev) if ridx.numel() else None
            y_real = real.labels[ridx].to(dev)
            grads, loss = [torch.zeros_like(images), torch.zeros_like(raw)], 0.0
            for _ in range(cfg.n_nets):
                theta0 = fresh_params(cfg.model, shape, K, cfg.net_init, g).to(dev)

                def outer(theta: torch.Tensor) -> torch.Tensor:
                    if ridx.numel() == 0:
                        return parallel.no_share(theta)
                    loss = F.cross_entropy(forward_flat(net, theta, x_real), y_real)
                    return loss * share if parallel.active else loss

                if ex["mode"] is None:
                    ex["mode"], mem_info = pick_memory_mode(cfg.memory, inner, lr_fn, theta0, T, dev, log)
                    ex["info"].update(mem_info)
                res = unroll(inner, lr_fn, theta0, T, outer, [images, raw], mode=ex["mode"], parallel=parallel)
                for k, grad in enumerate(res.grads):
                    if grad is not None:
                        grads[k] += grad / cfg.n_nets
                loss += res.loss / cfg.n_nets
            images.grad, raw.grad = grads
            opt.step()
            loop.done(loss)
        lrs = F.softplus(raw.detach()).cpu().tolist()
        info = {**ex["info"], **loop.summary()}
        info.update(replay={"model": cfg.model, "net_init": cfg.net_init, "distill_steps": steps,
                            "distill_epochs": cfg.distill_epochs, "images_per_class_per_step": spec.ipc // steps,
                            "step_of_slot": "slot // images_per_class_per_step", "lrs": lrs,
                            "evaluate_with": "dcompress.train.replay.replay_accuracy"})
        return CompressedSet(images=images.detach().cpu(), labels=labels.cpu(), synthetic=True, lrs=lrs, info=info,
                             sources=slot_sources(init_keys, spec.ipc), protocol=EvalProtocol(name="dd", epochs=300, aug=None))
