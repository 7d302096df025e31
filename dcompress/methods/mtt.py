"""MTT — Matching Training Trajectories (Cazenavette et al., CVPR'22; methods.md §6).

Per iteration: pick an expert and a start epoch t ∈ [0, max_start_epoch); θ0 = its snapshot t,
θ* = snapshot t + expert_epochs; train a student from θ0 for `syn_steps` SGD steps on
DSA-augmented synthetic minibatches with the learned lr α; loss ‖θ_N − θ*‖² / ‖θ0 − θ*‖²;
back-propagate through the unrolled steps (`train.unroll`) into the pixels and α.

Where we differ from `distill.py`: α = lr_teacher·exp(u) stays positive (the reference learns α
itself, which can cross zero; see `PositiveLr`); experts are visited in shuffled cycles drawn
from the run's generator; the unrolled gradient may be computed in constant memory
(`memory`), chosen automatically from the measured graph size and the free memory.
DATM (datm.py) is this loop with a start-epoch window, learned soft labels and a threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from .. import dist
from ..augment import dsa
from ..augment.dsa import DEFAULT_STRATEGY
from ..config import Validated, non_negative, positive, unit_open
from ..errors import InputDataError, UsageError
from ..registry import MethodInfo, register_method
from ..train.buffer import ExpertBuffer
from ..train.experts import ExpertConfig, default_buffer_dir, train_experts
from ..train.unroll import UnrollResult, pick_memory_mode, unroll
from ..core import CompressedSet, LogFn, RealData, RunSpec
from ..io.schema import EvalProtocol
from ..nets import has_batchnorm
from .base import check_ipc, class_labels, init_images_by_class, slot_sources
from ..seeds import derive
from .loop import SynthesisLoop



class PositiveLr:
    """The learned student lr, α = α0·exp(u), u a 0-dim leaf starting at 0.

    The reference optimises α directly with SGD; α can go negative and the student then
    ascends its loss (a known failure). Here u is optimised with step `lr_lr / α0²`: since
    dα/du = α, the first updates equal the reference's additive steps on α, and later ones
    are relative, so α approaches 0 but never crosses it. `clamp_()` after each step keeps
    α within a factor `BOUND` of α0, so one huge gradient cannot underflow α to exactly 0
    (a student that never moves gives u no gradient to recover with).
    """

    BOUND = 1e6

    def __init__(self, init: float, device: torch.device, dtype: torch.dtype = torch.float32):
        if init <= 0:
            raise UsageError(f"lr_teacher (the initial learned lr) must be > 0, got {init}")
        self.init = float(init)
        self.u = torch.zeros((), device=device, dtype=dtype, requires_grad=True)

    def value(self) -> torch.Tensor:
        return self.init * torch.exp(self.u)

    def step_size(self, lr_lr: float) -> float:
        return lr_lr / self.init ** 2

    @torch.no_grad()
    def clamp_(self) -> None:
        b = math.log(self.BOUND)
        self.u.clamp_(-b, b)


def draw_plan(n: int, batch_syn: int, steps: int, strategy: str | None, image_shape: tuple[int, int, int],
              generator: torch.Generator, device: torch.device) -> list[tuple[torch.Tensor, object]]:
    """Per inner step: (indices into the synthetic set, DSA params or None), drawn up front so that
    a recomputed step sees the same batch and augmentation. Minibatches are chunks of a randperm
    (a new one when exhausted); DSA params are fresh per step, per sample (non-siamese)."""
    plan, chunks = [], []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(n, generator=generator).split(batch_syn))
        idx = chunks.pop(0)
        params = (dsa.make_params(strategy, idx.numel(), image_shape, generator=generator, siamese=False,
                                  device=device) if strategy else None)
        plan.append((idx.to(device), params))
    return plan


def trajectory_loss_fns(net: torch.nn.Module, theta0: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                        targets: torch.Tensor, plan, soft: bool, parallel: "dist.BatchParallel | None" = None):
    """(inner_loss(θ, i), outer_loss(θ_N)) of one matching iteration.

    inner: CE (or SoftCE against `targets` logits) of the student on step i's augmented batch.
    outer: ‖θ_N − θ*‖² / ‖θ0 − θ*‖² (the reference's per-parameter means cancel).
    Under torchrun (`parallel` active) both are this rank's share: the CE of its block of the
    batch weighted by the block's share of the batch, and the outer loss / W.
    """
    from ..nets.functional import forward_flat
    from ..train.loop import soft_cross_entropy

    split = parallel is not None and parallel.active

    def inner(theta: torch.Tensor, i: int) -> torch.Tensor:
        idx, params = plan[i]
        weight = 1.0
        if split:
            part, b = parallel.part(idx.numel()), idx.numel()
            idx, params = idx[part], params.rows(part) if params is not None else None
            if idx.numel() == 0:                  # a batch smaller than the world: no share here
                return parallel.no_share(theta)
            weight = idx.numel() / b
        x = images[idx]
        if params is not None:
            x = dsa.apply(x, params)
        out = forward_flat(net, theta, x)
        loss = soft_cross_entropy(out, targets[idx]) if soft else F.cross_entropy(out, targets[idx])
        return loss * weight if split else loss

    denom = (theta0 - target).pow(2).sum()
    share = parallel.world if split else 1

    def outer(theta_n: torch.Tensor) -> torch.Tensor:
        loss = (theta_n - target).pow(2).sum() / denom
        return loss / share if split else loss

    return inner, outer


def expert_buffer(real: RealData, spec: RunSpec, cfg, log: LogFn) -> tuple[ExpertBuffer, dict]:
    """The buffer of `--experts`, or the default one in the cache (trained now if missing)."""
    path = spec.experts
    if path is not None:
        buf = ExpertBuffer(path)
        info = {"path": str(Path(path).absolute()), "default": False}
    else:
        ecfg = ExpertConfig(model=cfg.model or "convnet", epochs=cfg.buffer_epochs or
                            (cfg.max_start_epoch + cfg.expert_epochs), dsa_strategy=cfg.dsa_strategy)
        where = default_buffer_dir(real, ecfg, spec.cache_dir)
        report = train_experts(real, where, num_experts=cfg.buffer_experts, config=ecfg, device=spec.device,
                               progress=spec.progress, log=log)
        if report["busy"]:
            raise UsageError(f"another process is training experts {report['busy']} of the default buffer "
                             f"{where}; wait for it or pass --experts", path=str(where))
        buf = ExpertBuffer(where)
        info = {"path": str(where), "default": True, "trained_now": report["trained"]}
        log({"event": "experts_default_buffer", "path": str(where), "trained_now": report["trained"],
             "reused": report["skipped_complete"]})
    net = buf.network
    c, h, w = real.image_shape
    if (net["channels"], net["num_classes"], list(net["im_size"])) != (c, real.num_classes, [h, w]):
        raise InputDataError(f"expert buffer is for {net['channels']}x{net['im_size']} images and "
                             f"{net['num_classes']} classes; input is {c}x{[h, w]}, {real.num_classes} classes",
                             path=info["path"])
    if cfg.model is not None and cfg.model != net["name"]:
        raise UsageError(f"config model {cfg.model!r} differs from the buffer's network {net['name']!r}; "
                         "drop the model setting or use a matching buffer")
    if buf.num_experts == 0:
        raise InputDataError("expert buffer has no complete expert", path=info["path"])
    match = buf.config["input"].get("fingerprint") == real.source.get("fingerprint")
    if not match:
        log({"event": "warning", "message": "expert buffer was trained on a different input (fingerprint differs)"})
    info.update(experts=buf.num_experts, epochs=buf.epochs, network=net["name"], matches_input=match)
    return buf, info


@register_method
class MTT:
    info = MethodInfo("mtt", "synthesis", "matching training trajectories of expert networks (learned lr)",
                      needs_experts=True, extras=("experts",), distributed=True, exact_form=True)   # inner batches: dist.BatchParallel

    @dataclass(frozen=True)
    class Config(Validated):
        """Defaults = `distill.py`. `model` None = the buffer's network. `memory`: "full" BPTT,
        "constant" exact adjoint, "tesla" TESLA's approximation, "auto" by measured size.
        `buffer_experts`/`buffer_epochs`: the default buffer trained when no --experts is given
        (epochs None = max_start_epoch + expert_epochs)."""

        iterations: int = non_negative(5000)
        lr_img: float = positive(1000.0)
        lr_lr: float = positive(1e-5)
        lr_teacher: float = positive(0.01)
        syn_steps: int = positive(20)
        expert_epochs: int = positive(3)
        max_start_epoch: int = non_negative(25)
        batch_syn: int | None = positive(None)
        pix_init: Literal["real", "noise"] = "real"
        dsa_strategy: str | None = DEFAULT_STRATEGY     # 'none' turns DSA off
        model: str | None = None
        memory: Literal["auto", "full", "constant", "tesla"] = "auto"
        buffer_experts: int = positive(5)
        buffer_epochs: int | None = positive(None)
        momentum_img: float = unit_open(0.5)  # distill.py: SGD(images, lr_img, momentum=0.5)
        momentum_lr: float = unit_open(0.5)   # distill.py: SGD(syn_lr, lr_lr, momentum=0.5)

    def __init__(self, config):
        self.config = config

    # -- the parts DATM changes ------------------------------------------------------------

    def check_window(self, buf: ExpertBuffer) -> None:
        cfg = self.config
        if cfg.expert_epochs < 1 or cfg.max_start_epoch < 1:
            raise UsageError("expert_epochs and max_start_epoch must be >= 1")
        if cfg.max_start_epoch > buf.epochs - cfg.expert_epochs:
            raise UsageError(f"max_start_epoch {cfg.max_start_epoch} + expert_epochs {cfg.expert_epochs} exceeds "
                             f"the experts' {buf.epochs} epochs; lower them or train longer experts")

    def start_epoch(self, it: int, generator: torch.Generator) -> int:
        return int(torch.randint(0, self.config.max_start_epoch, (1,), generator=generator))

    def init_images(self, real, spec, buf, net) -> tuple[torch.Tensor, list[str | None], dict]:
        """The initial images [C·ipc, ...] (class-major), their source keys and info."""
        images, keys = init_images_by_class(real, range(real.num_classes), spec.ipc, self.config.pix_init, spec.seed,
                                            spec.device)
        return images, keys, {"pix_init": self.config.pix_init}

    def init_targets(self, images, labels, buf, net) -> tuple[torch.Tensor | None, dict]:
        return None, {}          # hard labels

    def accept(self, loss: float) -> bool:
        return True

    def strategy(self) -> str | None:
        """The DSA strategy of synthesis and evaluation; None when `dsa_strategy` is 'none'."""
        return self.config.dsa_strategy if dsa.parse_strategy(self.config.dsa_strategy) else None

    def eval_aug(self) -> str | None:
        """The evaluation protocol trains with the DSA strategy the synthesis used (None when off)."""
        return self.strategy()

    def result(self, images, labels, soft, lr: float, info: dict, model: str, sources: list[dict]) -> CompressedSet:
        return CompressedSet(images=images, labels=labels, synthetic=True, lr=lr, info=info, sources=sources,
                             protocol=EvalProtocol(name="mtt", model=model, epochs=1000, aug=self.eval_aug(),
                                                   use_learned_lr=True))

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        from ..nets import build_net

        cfg, dev = self.config, spec.device
        check_ipc(real, spec.ipc)
        buf, buf_info = expert_buffer(real, spec, cfg, log)
        self.check_window(buf)
        c, h, w = real.image_shape
        net = build_net(buf.network["name"], c, real.num_classes, (h, w),
                        generator=torch.Generator().manual_seed(0)).to(dev)   # structure only
        parallel = dist.batch_parallel(self.info.name, has_batchnorm(net))
        labels = class_labels(real.num_classes, spec.ipc).to(dev)
        n = labels.numel()
        batch_syn = cfg.batch_syn or n
        info: dict = {"experts": buf_info, "lr_parametrisation": "lr_teacher * exp(u), step lr_lr / lr_teacher^2"}
        x0, init_keys, init_info = self.init_images(real, spec, buf, net)
        soft0, label_info = self.init_targets(x0, labels, buf, net)
        info.update(init_info, **label_info)
        images = x0.detach().clone().to(dev).requires_grad_(True)
        soft = soft0.detach().clone().to(dev).requires_grad_(True) if soft0 is not None else None
        lr = PositiveLr(cfg.lr_teacher, dev)
        opts = {"img": torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum_img),
                "lr": torch.optim.SGD([lr.u], lr=lr.step_size(cfg.lr_lr), momentum=cfg.momentum_lr)}
        if soft is not None:
            opts["y"] = torch.optim.SGD([soft], lr=cfg.lr_y, momentum=cfg.momentum_y)
        leaves = [images, lr.u] + ([soft] if soft is not None else [])
        state = {"images": images, "u": lr.u, **({"soft": soft} if soft is not None else {}),
                 **{"opt_" + k: o for k, o in opts.items()}}
        loop = SynthesisLoop(self.info.name, cfg.iterations, spec, log, state=state, guard=[images, lr.u],
                             extra={"skipped": 0, "mode": None, "mem_info": {}})
        targets = soft if soft is not None else labels
        strategy = self.strategy()
        ex = loop.extra
        for it in loop:
            # experts in a fresh random order every round of num_experts iterations; the rest of
            # iteration `it` (start epoch, batches, augmentation) from its own derived generator
            rnd, pos = divmod(it, buf.num_experts)
            e = int(torch.randperm(buf.num_experts, generator=derive(spec.seed, "experts", rnd))[pos])
            g = derive(spec.seed, it)
            t = self.start_epoch(it, g)
            theta0 = buf.snapshot(e, t).to(dev)
            target = buf.snapshot(e, t + cfg.expert_epochs).to(dev)
            plan = draw_plan(n, batch_syn, cfg.syn_steps, strategy, (c, h, w), g, dev)
            inner, outer = trajectory_loss_fns(net, theta0, target, images, targets, plan, soft is not None, parallel)
            if ex["mode"] is None:
                ex["mode"], ex["mem_info"] = pick_memory_mode(cfg.memory, inner, lambda i: lr.value(), theta0,
                                                              cfg.syn_steps, dev, log)
            res: UnrollResult = unroll(inner, lambda i: lr.value(), theta0, cfg.syn_steps, outer, leaves,
                                       mode=ex["mode"], parallel=parallel)
            if self.accept(res.loss):
                for leaf, grad in zip(leaves, res.grads):
                    leaf.grad = grad
                for o in opts.values():
                    o.step()
                lr.clamp_()
            else:
                ex["skipped"] += 1
            loop.done(res.loss, lr=float(lr.value().detach()), expert=e, start_epoch=t)
        info.update(ex["mem_info"], memory=ex["mode"] or ex["mem_info"].get("memory"), skipped_updates=ex["skipped"],
                    lr_init=cfg.lr_teacher, lr_final=float(lr.value().detach()), **loop.summary())
        return self.result(images.detach().cpu(), labels.cpu(), soft.detach().cpu() if soft is not None else None,
                           float(lr.value().detach()), info, buf.network["name"], slot_sources(init_keys, spec.ipc))
