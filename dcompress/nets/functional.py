"""Flat-parameter view of a network, for unrolled training (DD, MTT, DATM).

Unrolled methods keep the student's weights as one 1-D tensor `flat` that is updated by
differentiable SGD steps (`flat = flat - lr * grad`); the network module only supplies the
architecture and its buffers. The reference code does this with a `ReparamModule` that rebinds
module attributes; we use `torch.func.functional_call`, which substitutes the parameters for
one call without touching the module.

Layout: parameters in `net.named_parameters()` order (shared parameters once), each flattened
row-major and concatenated. `param_shapes(net)` describes it; every function here agrees on it.

Buffers (BatchNorm running statistics) always come from the module itself; a train-mode
BatchNorm forward updates them in place, as a plain forward would.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call


def param_shapes(net: nn.Module) -> list[tuple[str, torch.Size]]:
    """(name, shape) of every parameter, in flat-layout order."""
    return [(name, p.shape) for name, p in net.named_parameters()]


def num_flat(net: nn.Module) -> int:
    """Length P of the flat parameter vector."""
    return sum(p.numel() for p in net.parameters())


def flat_params(net: nn.Module) -> Tensor:
    """All parameters as one detached 1-D copy.

    Returns:
        [P] tensor on the parameters' device and dtype; not a view (editing it leaves `net` alone).
    """
    params = [p.detach().reshape(-1) for p in net.parameters()]
    if not params:
        return torch.empty(0)
    return torch.cat(params)


def _check(net: nn.Module, flat: Tensor) -> list[tuple[str, torch.Size]]:
    shapes = param_shapes(net)
    expected = sum(s.numel() for _, s in shapes)
    if flat.dim() != 1 or flat.numel() != expected:
        raise ValueError(f"flat parameters must be 1-D with {expected} elements for "
                         f"{type(net).__name__}, got shape {tuple(flat.shape)}")
    return shapes


def unflatten(net: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Splits `flat` [P] into {parameter name: view of shape param.shape}.

    The tensors are views of `flat`, so gradients flow back to it.
    """
    shapes = _check(net, flat)
    chunks = torch.split(flat, [s.numel() for _, s in shapes])
    return {name: chunk.view(shape) for (name, shape), chunk in zip(shapes, chunks)}


def forward_flat(net: nn.Module, flat: Tensor, x: Tensor) -> Tensor:
    """`net(x)` with the parameters taken from `flat` (differentiable w.r.t. `flat` and `x`).

    Args:
        net: the architecture (its own parameters are not used; its buffers are).
        flat: [P] parameters in `param_shapes(net)` order, on x's device.
        x: [B, C, H, W] input.

    Returns:
        Logits [B, num_classes].
    """
    return functional_call(net, unflatten(net, flat), (x,))


def load_flat_(net: nn.Module, flat: Tensor) -> None:
    """Copies `flat` [P] into the network's parameters in place (no autograd history)."""
    shapes = _check(net, flat)
    with torch.no_grad():
        start = 0
        for p, (_, shape) in zip(net.parameters(), shapes):
            n = shape.numel()
            p.copy_(flat[start:start + n].view(shape))
            start += n
