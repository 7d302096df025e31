"""GSAM (Zhuang et al., ICLR'22): the optimiser FTD/DATM train flat expert trajectories with."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import batch_of


def gsam_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, generator: torch.Generator, aug: str | None, rho: float, alpha: float, adaptive: bool) -> float:
    """One epoch of GSAM (Zhuang et al., ICLR'22), the optimiser FTD/DATM train experts with.
    Per batch: g = ∇L(w); ε = ρ·T²g/‖Tg‖ with T = |w| (adaptive) or 1; g_p = ∇L(w+ε);
    step along g_p − α·(g − proj_{g_p} g), i.e. descend the perturbed loss while ascending
    the part of the plain gradient orthogonal to it (the surrogate gap). Both passes see the
    same augmented batch. Returns the mean loss at w.
    """
    from ..augment import dsa

    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    order = torch.randperm(x.shape[0], generator=generator).to(y.device)
    total, seen = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        idx = order[start:start + batch_size]
        xb = batch_of(x, idx, y.device)
        xb = dsa.augment(xb, aug, generator=generator) if aug else xb
        loss = F.cross_entropy(net(xb), y[idx])
        g = torch.autograd.grad(loss, params)
        with torch.no_grad():
            scale = [p.abs() if adaptive else torch.ones_like(p) for p in params]
            norm = torch.sqrt(sum(((s * gi) ** 2).sum() for s, gi in zip(scale, g)))
            eps = [rho * s * s * gi / (norm + 1e-12) for s, gi in zip(scale, g)]
            for p, e in zip(params, eps):
                p.add_(e)
        gp = torch.autograd.grad(F.cross_entropy(net(xb), y[idx]), params)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
            inner = sum((a * b).sum() for a, b in zip(g, gp))
            gp_sq = sum((b * b).sum() for b in gp) + 1e-24
            for p, gi, gpi in zip(params, g, gp):
                vertical = gi - (inner / gp_sq) * gpi
                p.grad = gpi - alpha * vertical
        opt.step()
        total += float(loss.detach()) * idx.numel()
        seen += idx.numel()
    return total / max(seen, 1)
