"""DC — Dataset Condensation with Gradient Matching (Zhao, Mopuri & Bilen, ICLR'21) and
DSA — the same with Differentiable Siamese Augmentation (Zhao & Bilen, ICML'21).
Reference: `main.py --method DC|DSA` (methods.md §3, §4).

    for each iteration: a fresh random network θ
        for ol in 1..outer_loop:
            (BN nets: set BN statistics from 16 real images/class, then freeze them)
            for each class c:  L += D(∇θ CE(θ; A_c(x_real,c)), ∇θ CE(θ; A_c(S_c)))
            one SGD(lr_img, momentum 0.5) step on the synthetic images S
            (not after the last ol) inner_loop epochs of SGD(lr_net) on θ over S (DSA: with DSA aug)

D is the per-output-channel cosine distance ('ours', `matching.distance_wb`). DC has no
augmentation (A = identity); DSA draws one Siamese DSA transform per class and applies it to
the real and the synthetic batch alike, so gradients reach S through the augmentation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from .. import dist
from ..augment import dsa
from ..config import Validated, non_negative, positive, unit_open
from ..errors import UsageError
from ..nets import build_net, has_batchnorm
from ..registry import MethodInfo, register_method
from ..train.loop import train_epoch
from ..core import CompressedSet, LogFn, RealData, RunSpec
from ..io.schema import EvalProtocol
from ..seeds import derive
from .base import (check_ipc, class_labels, draw_class, eval_model_for, init_images_by_class,
                   parse_strategy_or_usage, synthesis_result)
from .loop import SynthesisLoop


# ---------------------------------------------------------------------------------------------
# Gradient matching (the reference's utils.py: match_loss, distance_wb, get_loops)

# get_loops(ipc) of the reference (methods.md §1.4): ipc -> (outer_loop, inner_loop).
REFERENCE_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
BN_IMAGES_PER_CLASS = 16   # reference `BNSizePC`: real images/class that set BN statistics before matching


# ----------------------------------------------------------------------------------------------
# Gradient distances


def distance_wb(gr: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """Per-output-channel cosine distance of one parameter's gradients ('ours').

    Rows are output channels/neurons: conv weights [out, in, h, w] -> [out, in*h*w], 3-D
    tensors [C, h, w] -> [C, h*w], linear weights as they are. Returns Σ_rows (1 − cos).
    1-D tensors (biases, norm affine parameters) contribute 0: the reference ignores them.
    """
    if gr.dim() == 1:
        return gr.new_zeros(())
    if gr.dim() > 2:
        gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
    dots = (gr * gs).sum(-1)
    norms = gr.norm(dim=-1) * gs.norm(dim=-1)
    return (1 - dots / (norms + 1e-6)).sum()


def match_loss(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor], metric: str = "ours") -> torch.Tensor:
    """Distance between two lists of per-parameter gradients (methods.md §3).

    'ours': Σ_params distance_wb; 'mse': Σ (g_real − g_syn)² over the concatenated flattened
    gradients; 'cos': 1 − cos(g_real, g_syn) of the concatenated vectors (eps 1e-6 as reference).
    """
    if metric == "ours":
        return sum((distance_wb(r, s) for r, s in zip(g_real, g_syn)), g_syn[0].new_zeros(()))
    r = torch.cat([g.reshape(-1) for g in g_real])
    s = torch.cat([g.reshape(-1) for g in g_syn])
    if metric == "mse":
        return ((r - s) ** 2).sum()
    if metric == "cos":
        return 1 - (r * s).sum() / (r.norm() * s.norm() + 1e-6)
    raise UsageError(f"dis_metric must be 'ours', 'mse' or 'cos', got {metric!r}")


def matched_params(net: torch.nn.Module, metric: str = "ours") -> list[torch.nn.Parameter]:
    """The parameters whose gradients `match_loss(metric)` reads.

    'ours' ignores 1-D tensors (biases, norm affine parameters: `distance_wb` gives them 0), so
    their gradients need not be computed: the same loss and image gradient bit for bit (the
    terms dropped were exact zeros), ~9 % less work per real-batch backward on ConvNet-3 (the
    conv bias gradients are reductions over whole activations). 'mse'/'cos' read all of them.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    return [p for p in params if p.dim() > 1] if metric == "ours" else params


def _summed_class_gradients(net: torch.nn.Module, x: torch.Tensor, c: int, params: Sequence[torch.Tensor], *,
                            scale: float, create_graph: bool) -> list[torch.Tensor]:
    """scale × ∇_params Σ CE(net(x), c): a part of a class's mean-CE gradient (torchrun image
    slots: the parts of the ranks sharing a class add up to it; an empty `x` gives zeros)."""
    if x.shape[0] == 0:
        return [torch.zeros_like(p) for p in params]
    target = torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)
    loss = F.cross_entropy(net(x), target, reduction="sum") * scale
    grads = torch.autograd.grad(loss, list(params), create_graph=create_graph)
    return list(grads) if create_graph else [g.detach() for g in grads]


def class_gradients(net: torch.nn.Module, x: torch.Tensor, c: int, *, create_graph: bool,
                    params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """∇_params CE(net(x), c) for a batch `x` of one class `c` (default: every trainable parameter)."""
    params = [p for p in net.parameters() if p.requires_grad] if params is None else list(params)
    out = net(x)
    target = torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)
    grads = torch.autograd.grad(F.cross_entropy(out, target), params, create_graph=create_graph)
    return list(grads) if create_graph else [g.detach() for g in grads]


# ----------------------------------------------------------------------------------------------
# Schedules and networks


def dc_loops(ipc: int, outer_loop: int | None = None, inner_loop: int | None = None) -> tuple[int, int]:
    """(outer_loop, inner_loop) for DC/DSA.

    The reference table for ipc in {1, 10, 20, 30, 40, 50}; otherwise outer = min(ipc, 50) and
    inner = clamp(round(500 / outer), 10, 50), which keeps outer·inner ≈ 500 like the table
    (ipc 10..50) and caps the inner epochs at the table's largest value (ipc 10 → 50).
    Explicit values override either part.
    """
    if ipc in REFERENCE_LOOPS:
        outer, inner = REFERENCE_LOOPS[ipc]
    else:
        outer = min(ipc, 50)
        inner = min(50, max(10, round(500 / outer)))
    return (outer if outer_loop is None else outer_loop), (inner if inner_loop is None else inner_loop)


def freeze_bn_stats(net: torch.nn.Module, x_real: torch.Tensor) -> None:
    """Sets BatchNorm running statistics from `x_real` (train-mode forward), then freezes them.

    Reference DC: 16 real images per class, then every BN module to eval mode so the matching
    forwards of real and synthetic batches normalise with the same statistics.
    """
    net.train()
    with torch.no_grad():
        net(x_real)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


@register_method
class DC:
    info = MethodInfo("dc", "synthesis", "gradient matching per class on fresh random nets (Zhao et al. 2021)",
                      distributed=True, exact_form=True)   # classes (or image slots) over the ranks: dist.ClassSplit

    @dataclass(frozen=True)
    class Config(Validated):
        """Defaults = reference `main.py` argparse (methods.md §3).

        iterations: outer iterations, each with a fresh random network (reference `Iteration`).
        lr_img: SGD lr on the pixels; momentum: its momentum (reference hard-codes 0.5).
        lr_net: SGD lr (no momentum) of the inner-loop network training.
        batch_real: real images per class per matching step; batch_train: inner-loop batch.
        pix_init: 'noise' (reference default) or 'real'.
        dis_metric: 'ours' (per-output-channel cosine, 1-D params ignored), 'mse' or 'cos'.
        outer_loop, inner_loop: None = reference `get_loops` table, extended to any ipc
            (`matching.dc_loops`).
        model: network to match on (dcompress.nets name).
        """

        iterations: int = non_negative(1000)
        lr_img: float = positive(0.1)
        momentum: float = unit_open(0.5)
        lr_net: float = positive(0.01)
        batch_real: int = positive(256)
        batch_train: int = positive(256)
        pix_init: Literal["real", "noise"] = "noise"
        dis_metric: Literal["ours", "mse", "cos"] = "ours"
        outer_loop: int | None = positive(None)
        inner_loop: int | None = positive(None)
        model: str = "convnet"

    def __init__(self, config: "DC.Config"):
        self.config = config
        if config.iterations < 0 or config.batch_real < 1 or config.batch_train < 1:
            raise UsageError(f"{self.info.name}: iterations must be >= 0, batch_real and batch_train >= 1")
        if (config.outer_loop is not None and config.outer_loop < 1) or \
                (config.inner_loop is not None and config.inner_loop < 0):
            raise UsageError(f"{self.info.name}: outer_loop must be >= 1 and inner_loop >= 0")
        self.strategy = self._strategy()

    def _strategy(self) -> str | None:
        """The DSA strategy used in matching (Siamese) and inner-loop training; DC has none."""
        return None

    def protocol(self) -> EvalProtocol:
        return EvalProtocol(name="dc", model=eval_model_for(self.config.model), epochs=300, aug=None)

    def match_step(self, net: torch.nn.Module, real: RealData, images: torch.Tensor, ipc: int,
                   generator, *, classes: list[int] | None = None, terms: list | None = None) -> float:
        """Σ_c D(g_real,c, g_syn,c), back-propagated class by class into `images.grad` only.

        `generator`: one torch.Generator for every class's draws (in class order), or a function
        class -> generator (fit: `derive(seed, it, outer step, c)`, so that a class's draws do not
        depend on the other classes). `classes`: the classes whose images `images` holds, in
        order (default all; torchrun: this rank's block). `terms` receives each class's term."""
        device = images.device
        total = torch.zeros((), device=device)
        matched = matched_params(net, self.config.dis_metric)   # only the gradients the distance reads
        for i, c in enumerate(range(real.num_classes) if classes is None else classes):
            gen = generator(c) if callable(generator) else generator
            xr = real.get(real.sample_class(c, self.config.batch_real, gen), device)
            xs = images[i * ipc:(i + 1) * ipc]
            if self.strategy is not None:
                params = dsa.make_params(self.strategy, xr.shape[0], real.image_shape, generator=gen,
                                         siamese=True, device=device)
                xr, xs = dsa.apply(xr, params), dsa.apply(xs, params)
            g_real = class_gradients(net, xr, c, create_graph=False, params=matched)
            g_syn = class_gradients(net, xs, c, create_graph=True, params=matched)
            loss_c = match_loss(g_syn, g_real, self.config.dis_metric)
            # inputs=[images]: the reference also accumulates (unused) second-order grads into θ
            loss_c.backward(inputs=[images])
            if terms is not None:
                terms.append(loss_c.detach())
            total += loss_c.detach()
        return float(total)          # one device sync per outer step

    def match_step_slots(self, net: torch.nn.Module, real: RealData, images: torch.Tensor, generator,
                         split: dist.ClassSplit) -> float:
        """`match_step` with image slots split over the ranks (`split.slots`: more ranks than
        classes): this rank holds slots of `split.classes`.

        A class's term needs its whole synthetic-batch gradient g_syn = Σ_slots ∇CE / ipc and
        its whole real-batch gradient. Each rank sharing class c computes the parts of both from
        its slots and its block of the real batch (the class's draws are the same on every rank),
        one all-reduce of a [classes, 2, P] buffer (P: the matched parameters) sums them, and
        each rank back-propagates ⟨∂D/∂g_syn, its own part⟩ into its slots: the one-process
        gradient up to the order of float additions. Returns the one-process loss."""
        device, ipc = images.device, split.ipc
        matched = matched_params(net, self.config.dis_metric)
        sizes = [p.numel() for p in matched]
        buf = torch.zeros(split.num_classes, 2, sum(sizes), device=device)
        parts = {}
        for c in split.classes:
            d = draw_class(real, c, self.config.batch_real, self.strategy, generator(c), device)
            idx, params = d.real_idx, d.aug
            xs = images[split.rows_of(c)]
            xs = xs if params is None else dsa.apply(xs, params)
            g_syn = _summed_class_gradients(net, xs, c, matched, scale=1 / ipc, create_graph=True)
            mine = idx[split.real_part(c, idx.numel())]
            if mine.numel():
                xr = real.get(mine, device)
                xr = xr if params is None else dsa.apply(xr, params)
                g_real = _summed_class_gradients(net, xr, c, matched, scale=1 / idx.numel(), create_graph=False)
                buf[c, 0] = torch.cat([g.reshape(-1) for g in g_real])
            buf[c, 1] = torch.cat([g.detach().reshape(-1) for g in g_syn])
            parts[c] = g_syn
        dist.all_reduce_sum(buf)
        terms = torch.zeros(split.num_classes, dtype=torch.float64)
        surrogate = images.new_zeros(())
        for c, g_syn in parts.items():
            tot_syn = [t.view_as(p).requires_grad_(True) for t, p in zip(buf[c, 1].split(sizes), matched)]
            tot_real = [t.view_as(p) for t, p in zip(buf[c, 0].split(sizes), matched)]
            loss_c = match_loss(tot_syn, tot_real, self.config.dis_metric)
            d_syn = torch.autograd.grad(loss_c, tot_syn)
            surrogate = surrogate + sum((d * g).sum() for d, g in zip(d_syn, g_syn))
            if split.counts(c):                # each class's term counted once over the ranks
                terms[c] = float(loss_c.detach())
        surrogate.backward(inputs=[images])
        dist.all_reduce_sum(terms)
        return float(terms.sum())

    def match(self, net: torch.nn.Module, real: RealData, images: torch.Tensor, generator,
              split: dist.ClassSplit) -> float:
        """Σ_c D(g_real,c, g_syn,c) over this rank's classes, back-propagated into `images.grad`;
        returns the one-process loss (classes split: gathered from every rank's class terms,
        added as one process adds them)."""
        if split.slots:
            return self.match_step_slots(net, real, images, generator, split)
        terms: list[torch.Tensor] = []
        local = self.match_step(net, real, images, split.ipc, generator, classes=split.classes, terms=terms)
        return split.loss(local, terms)

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        """Algorithm 1 of the paper. Iteration `it` draws the network init, BN batches and
        inner-loop shuffles from `derive(seed, it)` and class c's real batch and DSA parameters of
        outer step `ol` from `derive(seed, it, ol, c)`: a resumed run needs no RNG state.

        Under torchrun each rank matches its classes' rows of the synthetic set (or, with more ranks
        than classes, its image slots; `dist.ClassSplit`), and the inner loop, which trains on all
        synthetic images, gets them all-gathered after each outer step: every rank trains the same
        network on the same rows."""
        cfg, ipc, device, name = self.config, spec.ipc, torch.device(spec.device), self.info.name
        check_ipc(real, ipc)
        outer, inner = dc_loops(ipc, cfg.outer_loop, cfg.inner_loop)
        ch, h, w = real.image_shape
        split = dist.ClassSplit(real.num_classes, ipc, name)
        images, init_keys = split.initial(
            lambda classes: init_images_by_class(real, classes, ipc, cfg.pix_init, spec.seed, device))
        images.requires_grad_(True)
        labels = class_labels(real.num_classes, ipc).to(device)
        opt_img = torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum)
        loop = SynthesisLoop(name, cfg.iterations, spec, log, state={"images": images, "optimizer": opt_img},
                             shard=split.shard)
        for it in loop:
            g = derive(spec.seed, it)
            net = build_net(cfg.model, ch, real.num_classes, (h, w), generator=g).to(device)
            net.train()
            opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net)
            bn = has_batchnorm(net)
            loss_sum = 0.0
            for ol in range(outer):
                if bn:
                    idx = torch.cat([real.sample_class(c, BN_IMAGES_PER_CLASS, g) for c in range(real.num_classes)])
                    freeze_bn_stats(net, real.get(idx, device))
                opt_img.zero_grad(set_to_none=True)
                loss = self.match(net, real, images, lambda c, it=it, ol=ol: derive(spec.seed, it, ol, c), split)
                if not math.isfinite(loss):
                    loop.done(loss)                      # raises NonFiniteLoss naming the iteration
                opt_img.step()
                loss_sum += loss
                if ol == outer - 1:
                    break
                syn = split.gather(images)
                for _ in range(inner):
                    train_epoch(net, opt_net, syn, labels, None, batch_size=cfg.batch_train, generator=g,
                                aug=self.strategy)
            loop.done(loss_sum / (outer * real.num_classes))   # the reference's logged loss_avg
        info = {"pix_init": cfg.pix_init, "outer_loop": outer, "inner_loop": inner, "dis_metric": cfg.dis_metric,
                **split.info(), **loop.summary()}
        return synthesis_result(split.gather(images), real, ipc, split.gather_keys(init_keys), self.protocol(), info)


@register_method
class DSA(DC):
    info = MethodInfo("dsa", "synthesis", "DC gradient matching with Siamese differentiable augmentation (Zhao & Bilen 2021)",
                      distributed=True, exact_form=True)

    @dataclass(frozen=True)
    class Config(DC.Config):
        """DC's fields and defaults, except init 'real' (README command) and the DSA strategy
        ('color_crop_cutout_flip_scale_rotate'; drop 'flip' for digit datasets)."""

        pix_init: Literal["real", "noise"] = "real"
        dsa_strategy: str = dsa.DEFAULT_STRATEGY

    def _strategy(self) -> str | None:
        strategy = parse_strategy_or_usage(self.config.dsa_strategy)
        if strategy is None:
            raise UsageError("dsa: dsa_strategy must name at least one augmentation; "
                             "use --method dc for gradient matching without augmentation")
        return strategy

    def protocol(self) -> EvalProtocol:
        return EvalProtocol(name="dsa", model=eval_model_for(self.config.model), epochs=1000, aug=self.strategy)
