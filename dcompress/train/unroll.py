"""Gradient of an outer loss through N unrolled inner SGD steps (MTT, DATM, DD).

The inner update is θ_{i+1} = θ_i − α_i ∇_θ ℓ_i(θ_i), where ℓ_i and α_i close over the
learnable leaves (synthetic images, soft-label logits, learnable lrs). `unroll` returns
dL(θ_N)/d leaf for every leaf, in one of three modes (docs/unrolling.md has the math):

- ``"full"``: back-propagation through the whole unrolled graph (MTT `distill.py`, DATM).
  Memory ∝ steps × one step's graph.
- ``"constant"``: exact reverse accumulation (adjoint). Stores only the θ_i; walks back one
  step at a time, recomputing that step's graph. Equals ``"full"`` to rounding; memory is
  one step's graph plus (steps + 1) parameter vectors.
- ``"tesla"``: the formula of TESLA / `DATM_tesla.py`: the adjoint loop with λ frozen at
  λ_N = ∂L/∂θ_N (no Hessian terms). **Approximate** except for the last step; kept for
  parity with those codes only.

Contract for callers: ``inner_loss(theta, i)`` must be a deterministic function of
``(theta, i, leaves)``: draw batch indices and augmentation parameters before calling
`unroll`, so that ``"constant"``/``"tesla"`` recompute exactly the loss the forward pass saw
(checked: a mismatch raises ValueError). θ_0 is a constant (its gradient is never formed).

Under torchrun, ``parallel`` (`dcompress.dist.BatchParallel`) splits each inner batch over the
ranks: ``inner_loss`` and ``outer_loss`` return this rank's share. The adjoint loop then needs
two plain sums over ranks per step — the inner gradient in pass 1 and the Hessian-vector
product H_i λ in pass 2 — and the leaf gradients, the losses and the finiteness checks are summed
over ranks at the end (the same on every rank, so every rank takes the same branch). ``"full"``
is computed by that exact adjoint (``"constant"``) under torchrun: back-propagating through
collectives would make every rank's autograd graph run the same sums in the same order, which
autograd does not promise (it prunes branches a rank does not need). docs/distributed.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..dist import BatchParallel, active
from ..errors import NonFiniteLoss

__all__ = ["MODES", "UnrollResult", "unroll", "step_graph_bytes", "full_graph_bytes_estimate",
           "constant_bytes_estimate", "choose_mode", "available_memory_bytes", "pick_memory_mode"]

MODES = ("full", "constant", "tesla")

# "full" only if its estimate leaves this share of free memory unused: the estimate counts the
# tensors saved for backward, not the gradient buffers and workspace of the final backward.
FULL_MODE_HEADROOM = 1.5


@dataclass
class UnrollResult:
    """What `unroll` returns.

    Attributes:
        loss: outer loss L(θ_N) as a float.
        grads: dL/d leaf for each leaf, same order as ``leaves``; None where L does not
            depend on that leaf.
        theta_final: θ_N, detached, same shape as θ_0.
        info: ``mode``, ``steps``, ``inner_losses`` (list of ℓ_i(θ_i) floats), ``seconds``;
            constant/tesla also ``recompute_max_rel_diff``.
    """

    loss: float
    grads: list[Tensor | None]
    theta_final: Tensor
    info: dict = field(default_factory=dict)


def _lr(lr_fn: Callable[[int], Tensor], i: int, like: Tensor) -> Tensor:
    a = lr_fn(i)
    a = a if isinstance(a, Tensor) else torch.as_tensor(a, dtype=like.dtype, device=like.device)
    if a.numel() != 1:
        raise ValueError(f"lr_fn({i}) must be a scalar (0-dim tensor), got shape {tuple(a.shape)}")
    return a.reshape(())


def _inner_grad(inner_loss: Callable[[Tensor, int], Tensor], theta: Tensor, i: int,
                create_graph: bool) -> tuple[Tensor, Tensor]:
    """(ℓ_i(θ), ∇_θ ℓ_i(θ)) (this rank's shares under torchrun); θ must require grad."""
    loss = inner_loss(theta, i)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"inner_loss(theta, {i}) must return a scalar tensor")
    (g,) = torch.autograd.grad(loss, theta, create_graph=create_graph, allow_unused=True)
    if g is None:
        raise ValueError(f"inner_loss(theta, {i}) does not depend on theta")
    return loss.reshape(()), g


def _check_finite(losses: list[Tensor], what: str) -> None:
    """One host sync for a whole list of scalars; names the first bad step."""
    vals = torch.stack([v.detach() for v in losses])
    ok = torch.isfinite(vals)
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0])
        where = f" at unrolled step {i}" if len(losses) > 1 or what.startswith("inner") else ""
        raise NonFiniteLoss(
            f"{what}{where} is {float(vals[i]):g}; the inner training diverged or a leaf holds NaN/inf "
            "(lower the learnable lr / syn_lr init or lr_img, or use fewer syn_steps)")


def _check_grads(grads: list[Tensor | None]) -> None:
    present = [(k, g) for k, g in enumerate(grads) if g is not None]
    if not present:
        return
    ok = torch.stack([torch.isfinite(g).all() for _, g in present])
    if not bool(ok.all()):
        k = present[int((~ok).nonzero()[0])][0]
        raise NonFiniteLoss(f"gradient w.r.t. leaf {k} is not finite (outer loss finite); "
                            "the unrolled Hessian products overflowed: lower the learnable lr or syn_steps")


def _add(acc: list[Tensor | None], new: Sequence[Tensor | None]) -> None:
    for k, g in enumerate(new):
        if g is not None:
            acc[k] = g if acc[k] is None else acc[k] + g


def unroll(inner_loss: Callable[[Tensor, int], Tensor], lr_fn: Callable[[int], Tensor], theta0: Tensor,
           steps: int, outer_loss: Callable[[Tensor], Tensor], leaves: Sequence[Tensor],
           mode: str = "full", parallel=None) -> UnrollResult:
    """dL(θ_N)/d leaves through ``steps`` inner SGD steps from θ_0.

    Args:
        inner_loss: ``inner_loss(theta, i)`` → scalar ℓ_i; deterministic in (theta, i, leaves).
        lr_fn: ``lr_fn(i)`` → α_i, a 0-dim tensor built from leaves (or a constant).
        theta0: initial parameters, any shape (normally flat, [P]); treated as a constant.
        steps: number of inner steps N ≥ 1.
        outer_loss: ``outer_loss(theta_N)`` → scalar L. It may also use leaves directly.
        leaves: tensors with ``requires_grad=True`` to differentiate.
        mode: "full" | "constant" | "tesla" (see module docstring).
        parallel: a `dcompress.dist.BatchParallel` under torchrun (see module docstring); None
            in one process.

    Raises:
        NonFiniteLoss: an inner loss, the outer loss or a gradient is NaN/inf.
        ValueError: bad arguments, or inner_loss recomputed to a different value.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    leaves = list(leaves)
    for k, t in enumerate(leaves):
        if not (isinstance(t, Tensor) and t.requires_grad):
            raise ValueError(f"leaves[{k}] must be a tensor with requires_grad=True")
    par = parallel if parallel is not None and parallel.active else BatchParallel(alone=True)
    requested = mode
    if mode == "full" and par.active:
        mode = "constant"                   # the exact adjoint; see the module docstring
    start = time.perf_counter()
    with torch.enable_grad():
        if mode == "full":
            loss, grads, theta_n, info = _full(inner_loss, lr_fn, theta0, steps, outer_loss, leaves, par)
        else:
            loss, grads, theta_n, info = _adjoint(inner_loss, lr_fn, theta0, steps, outer_loss, leaves,
                                                  exact=(mode == "constant"), par=par)
    grads = par.sum_grads(grads, leaves)
    _check_grads(grads)
    info.update(mode=mode, steps=steps, seconds=time.perf_counter() - start,
                **({"requested_mode": requested} if requested != mode else {}))
    return UnrollResult(loss=loss, grads=grads, theta_final=theta_n, info=info)


def _full(inner_loss, lr_fn, theta0, steps, outer_loss, leaves, par):
    theta = theta0.detach().clone().requires_grad_(True)
    losses = []
    for i in range(steps):
        li, g = _inner_grad(inner_loss, theta, i, create_graph=True)
        losses.append(li.detach())
        theta = theta - _lr(lr_fn, i, theta) * g
    outer = outer_loss(theta)
    losses, total = _totals(par, losses, outer)
    grads = list(torch.autograd.grad(outer, leaves, allow_unused=True))
    info = {"inner_losses": losses.tolist()}
    return float(total), grads, theta.detach(), info


def _totals(par, losses: list[Tensor], outer: Tensor) -> tuple[Tensor, Tensor]:
    """The inner losses and the outer loss summed over ranks (one collective), checked finite."""
    both = par.total(torch.cat([torch.stack(losses), outer.detach().reshape(1)]))
    _check_finite(list(both[:-1]), "inner loss")
    _check_finite([both[-1]], "outer loss")
    return both[:-1], both[-1]


def _adjoint(inner_loss, lr_fn, theta0, steps, outer_loss, leaves, exact: bool, par):
    # Pass 1: plain SGD, keeping only the iterates θ_0..θ_{N-1} (no graph survives a step).
    thetas, losses = [], []
    theta = theta0.detach()
    for i in range(steps):
        theta = theta.detach().requires_grad_(True)
        li, g = _inner_grad(inner_loss, theta, i, create_graph=False)
        thetas.append(theta.detach())
        losses.append(li.detach())
        theta = (theta - _lr(lr_fn, i, theta).detach() * par.total(g)).detach()
    theta_n = theta.requires_grad_(True)
    outer = outer_loss(theta_n)
    totals, total = _totals(par, losses, outer)
    lam, *grads = torch.autograd.grad(outer, [theta_n] + leaves, allow_unused=True)
    grads = list(grads)  # direct dependence of L on leaves, usually all None
    lam = par.total(torch.zeros_like(theta_n) if lam is None else lam.detach())   # λ_N = Σ_r ∂(share_r)/∂θ_N

    # Pass 2: i = N-1..0. With s = <θ_i − α_i g_i(θ_i), λ_{i+1}> (λ constant), one backward gives
    # ∂s/∂θ_i = λ_{i+1} − α_i H_i λ_{i+1} = λ_i and ∂s/∂leaf = this step's term of dL/d leaf.
    recomputed = []
    for i in reversed(range(steps)):
        theta_i = thetas[i].requires_grad_(True)
        li, g = _inner_grad(inner_loss, theta_i, i, create_graph=True)
        recomputed.append(li.detach())
        alpha = _lr(lr_fn, i, theta_i)
        if exact and par.active:
            # λ_i = λ_{i+1} − α_i Σ_r H_i^r λ_{i+1}: each rank's product from its share, then summed
            s = -alpha * (g * lam).sum()
            hvp, *step_grads = torch.autograd.grad(s, [theta_i] + leaves, allow_unused=True)
            lam = lam + par.total(torch.zeros_like(lam) if hvp is None else hvp)
        elif exact:
            s = (theta_i * lam).sum() - alpha * (g * lam).sum()
            new_lam, *step_grads = torch.autograd.grad(s, [theta_i] + leaves, allow_unused=True)
            lam = new_lam.detach()
        else:  # TESLA: λ frozen at λ_N, θ_i not differentiated
            s = -alpha * (g * lam).sum()
            step_grads = torch.autograd.grad(s, leaves, allow_unused=True)
        _add(grads, step_grads)
        thetas[i] = None  # free the iterate as soon as it is used

    recomputed.reverse()
    rel = par.most(_max_rel_diff(torch.stack(losses), torch.stack(recomputed)))   # every rank raises, or none
    tol = 1e-4 if theta0.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    if rel > tol:
        raise ValueError(f"inner_loss recomputed to a different value (max relative diff {rel:.3g} > {tol:g}): "
                         "it must be deterministic in (theta, i, leaves); draw batch indices and augmentation "
                         "parameters before calling unroll, and avoid dropout")
    info = {"inner_losses": totals.tolist(), "recompute_max_rel_diff": rel}
    return float(total), grads, theta_n.detach(), info


def _max_rel_diff(a: Tensor, b: Tensor) -> float:
    scale = torch.maximum(a.abs(), b.abs()).clamp_min(torch.finfo(a.dtype).tiny)
    return float(((a - b).abs() / scale).max())


# ---------------------------------------------------------------------------------------------
# Memory model and mode choice (docs/unrolling.md, "Memory").

def step_graph_bytes(inner_loss: Callable[[Tensor, int], Tensor], lr_fn: Callable[[int], Tensor],
                     theta0: Tensor, step: int = 0) -> int:
    """Bytes one unrolled step keeps alive in "full" mode, measured on one step.

    Counts every tensor autograd saves for the double backward of step ``step`` (forward,
    create_graph backward and the update θ − α g), deduplicated by storage. θ_0's own storage
    is excluded (it exists in every mode).
    """
    seen: dict[tuple, int] = {}
    theta = theta0.detach().clone().requires_grad_(True)
    skip = theta.untyped_storage().data_ptr()

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st.data_ptr() != skip:
            seen[(t.device, st.data_ptr())] = st.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, g = _inner_grad(inner_loss, theta, step, create_graph=True)
        nxt = theta - _lr(lr_fn, step, theta) * g
    del nxt, g
    return int(sum(seen.values()))


def full_graph_bytes_estimate(step_bytes: int, steps: int) -> int:
    """Saved-tensor bytes of the whole "full" graph: steps × one step (growth is exactly linear)."""
    return int(step_bytes) * int(steps)


def constant_bytes_estimate(step_bytes: int, steps: int, n_params: int, itemsize: int = 4) -> int:
    """"constant"/"tesla": one step's graph plus the stored iterates θ_0..θ_N."""
    return int(step_bytes) + (int(steps) + 1) * int(n_params) * int(itemsize)


def choose_mode(estimated_bytes: int, available_bytes: int) -> str:
    """"full" when its estimate × FULL_MODE_HEADROOM fits in ``available_bytes``, else "constant"."""
    return "full" if estimated_bytes * FULL_MODE_HEADROOM <= available_bytes else "constant"


def available_memory_bytes(device: torch.device | str) -> int:
    """Free memory on ``device``: CUDA free memory, or the host's MemAvailable for CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise RuntimeError(f"cannot read the free memory of {device}; pass available_bytes explicitly")


def pick_memory_mode(setting: str, inner, lr_fn, theta0: torch.Tensor, steps: int, device: torch.device,
                     log: Callable[[dict], None]) -> tuple[str, dict]:
    """The memory mode of an unrolled method (MTT, DATM, DD) and what decided it, for the manifest:
    `setting` unless "auto"; then "constant" under torchrun, else "full" when `steps` × the
    measured bytes of one unrolled step, with FULL_MODE_HEADROOM, fits the free memory (CUDA
    free memory, or MemAvailable), else "constant". `log` receives the measured figures."""
    if setting != "auto":
        return setting, {"memory": setting, "memory_choice": "configured"}
    if active():      # torchrun: unroll computes "full" by the exact adjoint anyway (train.unroll)
        return "constant", {"memory": "constant", "memory_choice": "torchrun"}
    step_b = step_graph_bytes(inner, lr_fn, theta0)
    est = full_graph_bytes_estimate(step_b, steps)
    avail = available_memory_bytes(device)
    mode = choose_mode(est, avail)
    info = {"memory": mode, "memory_choice": "auto", "full_graph_estimate_bytes": est,
            "step_graph_bytes": step_b, "available_bytes": avail}
    log({"event": "memory_mode", **info})
    return mode, info
