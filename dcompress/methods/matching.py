"""Shared machinery of the matching-based synthesis methods (DC, DSA, DM).

Gradient distances (methods.md §3, "match_loss"), the DC outer/inner loop schedule, BatchNorm
freezing, and the synthesis loop's bookkeeping: initialisation, checkpoint state, the
non-finite guard and the returned CompressedSet. The algorithms themselves live in `dc.py`
and `dm.py`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..core import CompressedSet, EvalProtocol, RealData
from ..errors import UsageError
from .base import class_labels

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


def has_batchnorm(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


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


def eval_model_for(model: str) -> str:
    """The evaluation network of a distillation network: ConvNet BN variants are evaluated
    without BN (reference `get_eval_pool('S')`: 'ConvNetBN' -> 'ConvNet')."""
    name = model.strip().lower()
    if not name.startswith("convnet"):
        return model
    tokens = [t for t in name.removeprefix("convnetbn").removeprefix("convnet").split("_") if t and t != "bn"]
    return "_".join(["convnet", *tokens])


def parse_strategy_or_usage(strategy: str | None) -> str | None:
    """Validates a DSA strategy string early; None/'' /'none' disable augmentation."""
    if strategy is None or strategy.strip().lower() in ("", "none"):
        return None
    from ..augment import dsa

    try:
        dsa.parse_strategy(strategy)
    except (ValueError, KeyError) as e:
        raise UsageError(f"bad dsa_strategy {strategy!r}: {e}") from None
    return strategy


# ----------------------------------------------------------------------------------------------
# Loop bookkeeping


def init_images_by_class(real: RealData, classes, ipc: int, init: str, seed: int,
                         device: torch.device) -> tuple[torch.Tensor, list[str | None]]:
    """Initial synthetic images of `classes` [len(classes)*ipc, ch, H, W] (in that order) and each
    slot's source key; class c's draw comes from `derive(seed, "init", c)`, so it does not depend
    on the other classes. 'real': random real images of the class; 'noise': N(0, 1)."""
    from .loop import derive

    parts, keys = [], []
    for c in classes:
        g = derive(seed, "init", c)
        if init == "real":
            idx = real.sample_class(c, ipc, g)
            parts.append(real.get(idx, device))
            keys += [real.keys[int(i)] for i in idx]
        elif init == "noise":
            ch, h, w = real.image_shape
            parts.append(torch.randn(ipc, ch, h, w, generator=g).to(device))
            keys += [None] * ipc
        else:
            raise UsageError(f"init must be 'real' or 'noise', got {init!r}")
    return torch.cat(parts), keys


def synthesis_result(images: torch.Tensor, real: RealData, ipc: int, init_keys: list[str | None],
                     protocol: EvalProtocol, info: dict) -> CompressedSet:
    """CompressedSet of optimised images; `slot` is the image's position within its class."""
    sources = [{"slot": i % ipc, "init_source_key": k} for i, k in enumerate(init_keys)]
    return CompressedSet(images=images.detach().float().cpu().clone(), labels=class_labels(real.num_classes, ipc),
                         logits=None, synthetic=True, sources=sources, protocol=protocol, info=info)


