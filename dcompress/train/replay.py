"""DD's own evaluation: the learned steps re-run on fresh networks drawn from the distillation's
init distribution (Wang et al. 2018), instead of training a network on the images as a set.

    acc = replay_accuracy("out/dd", load_real(test_urls), runs=5)    # {"mean", "std", "runs"} in %

A DD output records what replaying needs in its manifest's `info["replay"]` (network, init,
steps, epochs, images per class per step, the learned lrs).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core import RealData, normalize
from ..errors import UsageError
from ..seeds import derive


def fresh_params(name: str, shape: tuple[int, int, int], num_classes: int, init: str,
                 generator: torch.Generator) -> torch.Tensor:
    """Flat parameters [P] of a newly initialised `name` network (CPU)."""
    from ..nets import build_net
    from ..nets.functional import flat_params

    c, h, w = shape
    fresh = build_net(name, c, num_classes, (h, w), generator=generator)
    if init == "xavier":
        with torch.no_grad():
            for mod in fresh.modules():
                if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                    wt = mod.weight
                    rf = wt[0][0].numel() if wt.dim() > 2 else 1
                    std = math.sqrt(2.0 / (wt.shape[1] * rf + wt.shape[0] * rf))
                    wt.copy_(torch.randn(wt.shape, generator=generator) * std)
                    if mod.bias is not None:
                        mod.bias.zero_()
    return flat_params(fresh)


def replay_accuracy(out_dir: str | Path, test: RealData, runs: int = 5, *, seed: int = 0,
                    device: torch.device = torch.device("cpu")) -> dict:
    """DD's own evaluation of a written DD output: train `runs` fresh networks (the distillation's
    init distribution) with exactly the learned steps — step i on the images of step
    i mod distill_steps with lr lrs[i] — and report test accuracy in % {"mean", "std", "runs"}."""
    from ..io.loader import load

    ds = load(out_dir)
    rp = ds.manifest["dcompress"]["info"].get("replay")
    if rp is None:
        raise UsageError("not a DD output (manifest info has no replay block)", path=str(out_dir))
    x_test = normalize(test.get_u8(torch.arange(len(test))), ds.mean, ds.std)
    return replay(ds.images, ds.labels, ds.lrs, rp, x_test, test.labels, num_classes=len(ds.classes), runs=runs,
                  seed=seed, device=device)


def replay(images: torch.Tensor, labels: torch.Tensor, lrs: list[float], rp: dict, x_test: torch.Tensor,
           y_test: torch.Tensor, *, num_classes: int, runs: int = 5, seed: int = 0,
           device: torch.device = torch.device("cpu")) -> dict:
    """`replay_accuracy` on tensors: `images` [M, C, H, W] in the output's order (class-major slots),
    `rp` the manifest's info["replay"] block, `x_test` normalised."""
    from ..nets import build_net
    from ..nets.functional import forward_flat, load_flat_
    from ..train.loop import accuracy

    per, steps = rp["images_per_class_per_step"], rp["distill_steps"]
    slots, seen = [], {}
    for y in labels.tolist():
        slots.append(seen.get(y, 0))
        seen[y] = slots[-1] + 1
    step_of = torch.tensor([s // per for s in slots])
    batches = [(step_of == s).nonzero().flatten().to(device) for s in range(steps)]
    shape = tuple(images.shape[1:])
    K = num_classes
    images, labels = images.to(device), labels.to(device)
    net = build_net(rp["model"], shape[0], K, shape[1:], generator=torch.Generator().manual_seed(0)).to(device)
    accs = []
    for r in range(runs):
        g = derive(seed, "replay", r)
        theta = fresh_params(rp["model"], shape, K, rp.get("net_init", rp.get("init")), g).to(device)
        for i, lr in enumerate(lrs):
            theta = theta.detach().requires_grad_(True)
            b = batches[i % steps]
            loss = F.cross_entropy(forward_flat(net, theta, images[b]), labels[b])
            (grad,) = torch.autograd.grad(loss, theta)
            theta = theta - lr * grad
        load_flat_(net, theta.detach())
        accs.append(accuracy(net, x_test, y_test, device=device))
    mean = sum(accs) / len(accs)
    std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
    return {"mean": round(100 * mean, 2), "std": round(100 * std, 2), "runs": [round(100 * a, 2) for a in accs]}
