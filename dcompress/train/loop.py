"""Training a fresh network on a (small) set, and measuring test accuracy.

`train_on_set` is the reference `evaluate_synset` protocol (methods.md §1.4): SGD with
momentum, `epochs + 1` passes, one x0.1 lr decay at `epochs // 2 + 1`, optional per-sample
DSA augmentation, hard or soft (SoftCE vs softmax(logits / T)) targets. `SetTrainer` is the
same training pass by pass (stop after any pass, go on later, the same weights).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..core import RealView, batch_of
from ..io.schema import EvalProtocol


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """mean_b Σ_c −log_softmax(logits)·softmax(target / T)  (DATM's SoftCrossEntropy)."""
    p = torch.softmax(target_logits / temperature, dim=1)
    return -(p * torch.log_softmax(logits, dim=1)).sum(1).mean()


def loss_fn(out: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor | None, temperature: float,
            kd: bool = False) -> torch.Tensor:
    """Cross-entropy on `hard`, or soft cross-entropy against softmax(soft / T); `kd`: the
    student's logits at T too, scaled by T² (the KL of RDED/SRe2L up to a constant, Hinton's
    scale so that SGD steps keep their size)."""
    if soft is None:
        return F.cross_entropy(out, hard)
    if kd:
        return soft_cross_entropy(out / temperature, soft, temperature) * temperature ** 2
    return soft_cross_entropy(out, soft, temperature)


def train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, images: "torch.Tensor | RealView",
                labels: torch.Tensor, soft: torch.Tensor | None, *, batch_size: int, generator: torch.Generator,
                aug: str | None = None, temperature: float = 1.0, parallel=None, kd: bool = False) -> float:
    """One shuffled pass over (images, labels[, soft]): images a float tensor or a RealView (read
    batch by batch); labels and soft on the net's device.

    `parallel` (a `dcompress.dist.BatchParallel` under torchrun; teacher training): every rank
    draws the same order, reads and trains on its block of each batch (its loss weighted by the
    block's share), and the gradients are summed over ranks before the step: the one-process SGD
    up to float rounding, on every rank. The returned mean loss is over all ranks. Not with `aug`
    (nothing trains augmented and split; the draws would have to be the whole batch's)."""
    net.train()
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(labels.device)
    device = labels.device
    split = parallel is not None and parallel.active
    if split and aug:
        raise ValueError("train_epoch: a split batch with augmentation is not supported")
    total, seen = 0.0, 0
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        b = idx.numel()
        part = parallel.part(b) if split else slice(None)
        idx = idx[part]
        opt.zero_grad(set_to_none=True)
        if idx.numel():
            x = batch_of(images, idx, device)
            if aug:
                from ..augment import dsa

                x = dsa.augment(x, aug, generator=generator)
            out = net(x)
            loss = loss_fn(out, labels[idx], None if soft is None else soft[idx], temperature, kd)
            (loss * (idx.numel() / b) if split else loss).backward()
            total += loss.item() * idx.numel()
            seen += idx.numel()
        if split:
            parallel.sum_param_grads(net)
        opt.step()
    if split:
        total, seen = (float(v) for v in parallel.total(torch.tensor([total, float(seen)], dtype=torch.float64)))
    return total / max(seen, 1)


class SetTrainer:
    """A fresh `protocol.model` trained on a set pass by pass, so that training can stop after
    any pass and go on later: `run_to(p)` trains passes `passes` .. p-1. The network, the
    optimiser (and its momentum), the generator and the pass counter live here, so any sequence
    of `run_to` calls ending at `total` gives the weights of one uninterrupted `train_on_set`
    bit for bit (tests/unit/test_train.py). The successive-halving lr search (train/fair.py)
    trains every lr to a rung and only the survivors on.

    Args:
        images: float32 [M, C, H, W] normalised. labels: int64 [M].
        soft: target logits [M, num_classes] when the protocol uses soft labels.
        lr: overrides protocol.lr (the learned lr of MTT/DATM).
        epochs: overrides protocol.epochs (demo/CI budgets); `total` = epochs + 1 passes.
        epoch_data: pass p trains on `epoch_data(p)` = (images [M, ...], target logits [M, C]) in
            place of `images`/`soft`: one view of every image per pass (views / online labels).
        progress: called (passes done, total) after every pass.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, protocol: EvalProtocol,
                 generator: torch.Generator, device: torch.device, soft: torch.Tensor | None = None,
                 lr: float | None = None, epochs: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 epoch_data: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None):
        from ..nets import build_net

        c, h, w = images.shape[1:]
        self.net = build_net(protocol.model, c, num_classes, (h, w), generator=generator).to(device)
        self.protocol, self.generator, self.device = protocol, generator, device
        self.images, self.labels = images.to(device), labels.to(device)
        self.soft = soft.to(device) if (soft is not None and protocol.soft_labels) else None
        self.epoch_data, self.progress = epoch_data, progress
        self.lr = float(protocol.lr if lr is None else lr)
        epochs = int(protocol.epochs if epochs is None else epochs)
        self.total, self.decay_at = epochs + 1, epochs // 2 + 1       # passes; the x0.1 decay's pass
        self.passes = 0            # passes trained so far
        self.diverged = False      # a non-finite loss stopped the training (as train_on_set does)
        self.opt = self._sgd(self.lr)

    def _sgd(self, rate: float) -> torch.optim.Optimizer:
        p = self.protocol
        return torch.optim.SGD(self.net.parameters(), lr=rate, momentum=p.momentum, weight_decay=p.weight_decay)

    def run_to(self, passes: int) -> torch.nn.Module:
        """Trains up to `passes` passes in all (0 <= passes <= total, not fewer than done) and
        returns the network in eval mode. After a non-finite loss nothing more is trained."""
        if not self.passes <= passes <= self.total:
            raise ValueError(f"SetTrainer.run_to({passes}): {self.passes} of {self.total} passes are done")
        p = self.protocol
        while self.passes < passes and not self.diverged:
            ep = self.passes
            if ep == self.decay_at:
                self.opt = self._sgd(self.lr * 0.1)
            x, target = (self.images, self.soft) if self.epoch_data is None else self.epoch_data(ep)
            loss = train_epoch(self.net, self.opt, x.to(self.device), self.labels,
                               None if target is None else target.to(self.device), batch_size=p.batch_size,
                               generator=self.generator, aug=p.aug, temperature=p.temperature, kd=p.kd)
            self.passes += 1
            # a diverged evaluation net scores what it scores; the caller reports accuracy
            self.diverged = not torch.isfinite(torch.tensor(loss))
            if self.progress is not None and not self.diverged:
                self.progress(self.passes, self.total)
        self.net.eval()
        return self.net


def train_on_set(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, protocol: EvalProtocol,
                 generator: torch.Generator, device: torch.device, soft: torch.Tensor | None = None,
                 lr: float | None = None, epochs: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 epoch_data: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.nn.Module:
    """Trains a fresh `protocol.model` on the set for `epochs + 1` passes and returns it (in
    eval mode): one uninterrupted `SetTrainer` (its docstring lists the arguments)."""
    trainer = SetTrainer(images, labels, num_classes=num_classes, protocol=protocol, generator=generator,
                         device=device, soft=soft, lr=lr, epochs=epochs, progress=progress, epoch_data=epoch_data)
    if progress is not None:
        progress(0, trainer.total)       # the bar starts now: its first epoch is timed on its own
    return trainer.run_to(trainer.total)


@torch.no_grad()
def predict(net: torch.nn.Module, images: "torch.Tensor | RealView", *, device: torch.device,
            batch_size: int = 1024, embed: bool = False) -> torch.Tensor:
    """Logits (or penultimate embeddings) for float images [N, C, H, W] or a RealView, on CPU."""
    from ..nets import embed as embed_fn

    net.eval()
    outs = []
    for start in range(0, images.shape[0], batch_size):
        x = batch_of(images, torch.arange(start, min(start + batch_size, images.shape[0])), device).to(device)
        outs.append((embed_fn(net, x) if embed else net(x)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device,
             batch_size: int = 1024) -> float:
    pred = predict(net, images, device=device, batch_size=batch_size).argmax(1)
    return float((pred == labels.cpu()).float().mean())
