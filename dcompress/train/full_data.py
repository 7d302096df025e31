"""The full-data network of the fair protocol's HLR (train/fair.py): the evaluation network
trained once on the whole training input minus the validation split, with hard labels, and its
test accuracy cached in `<cache>/full-data/<key>.json` per input, test subset, recipe, model,
validation split and seed (docs/evaluation.md). One network per input: the frontier's points and
later evaluations of the same input read it back.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..cache import cache_root
from ..config import Validated, non_negative, positive, unit_open
from ..core import RealData, RealView
from ..io.safe_write import remove_dead_temps, write_json
from ..seeds import derive
from .loop import accuracy, train_epoch

ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class FullDataConfig(Validated):
    """How the full-data (hard label) accuracy of HLR is trained: the evaluation network on the
    whole training input minus the validation split (`max_samples`: a seeded subset of it), SGD,
    `epochs` passes, lr x0.1 for the second half, no augmentation. The default is sized for a
    CPU (DD-Ranking trains ConvNet-3 200 epochs); raise `epochs` on a GPU."""

    epochs: int = positive(5)
    lr: float = positive(0.01)
    momentum: float = unit_open(0.9)
    weight_decay: float = non_negative(5e-4)
    batch_size: int = positive(256)
    max_samples: int | None = positive(None)


def full_data_accuracy(train: RealData, pools: list[torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], *,
                       model: str, cfg: FullDataConfig, seed: int, device: torch.device, test_key: dict,
                       val_per_class: int, progress: ProgressFn | None = None) -> dict:
    """Test accuracy (fraction) of `model` trained on the training input minus the validation
    split with hard labels, read from `<cache>/full-data/<key>.json` when the same input, test
    subset, recipe, model, validation split and seed were measured before; else trained and
    cached (atomic write), under a lock: processes that want it at once (frontier ranks) train it
    once. An unreadable or foreign cache entry is recomputed and replaced."""
    from ..io.atomic import made_once

    key = {"input": train.source.get("fingerprint"), "test": test_key, "model": model,
           "recipe": dataclasses.asdict(cfg), "val_per_class": val_per_class, "seed": seed, "kind": "full-data-v1"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_root() / "full-data" / f"{digest}.json"
    return made_once(path.with_suffix(".lock"), lambda: _cached_full_data(path, key),
                     lambda: _train_full_data(train, pools, test, model=model, cfg=cfg, seed=seed, device=device,
                                              key=key, path=path, progress=progress),
                     what="training this full-data network")


def _cached_full_data(path: Path, key: dict) -> dict | None:
    try:
        rec = json.loads(path.read_text())
        if rec.get("key") == key and 0.0 <= float(rec["accuracy"]) <= 1.0:
            return {**rec, "cached": True, "path": str(path), "percent": round(100 * float(rec["accuracy"]), 2)}
    except (OSError, ValueError, KeyError, TypeError):
        pass                                  # missing, truncated or foreign: measured again
    return None


def _train_full_data(train: RealData, pools: list[torch.Tensor], test, *, model: str, cfg: FullDataConfig, seed: int,
                     device, key: dict, path: Path, progress: ProgressFn | None) -> dict:
    t0 = time.time()
    idx = torch.cat(pools).sort().values
    g = derive(seed, "full-data")
    if cfg.max_samples is not None and idx.numel() > cfg.max_samples:
        idx = idx[torch.randperm(idx.numel(), generator=g)[:cfg.max_samples]].sort().values
    from ..nets import build_net

    c, h, w = train.image_shape
    net = build_net(model, c, train.num_classes, (h, w), generator=g).to(device)
    view, y = RealView(train, idx), train.labels[idx].to(device)

    def sgd(lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    opt = sgd(cfg.lr)
    for ep in range(cfg.epochs):
        if cfg.epochs > 1 and ep == cfg.epochs // 2:
            opt = sgd(cfg.lr * 0.1)
        train_epoch(net, opt, view, y, None, batch_size=cfg.batch_size, generator=g)
        if progress:
            progress(ep + 1, cfg.epochs, "full-data network (epochs)")
    net.eval()
    acc = accuracy(net, test[0], test[1], device=device)
    rec = {"key": key, "accuracy": acc, "samples": int(idx.numel()), "seconds": round(time.time() - t0, 1),
           "dcompress": __version__}
    remove_dead_temps(path.parent)
    write_json(path, rec)
    return {**rec, "cached": False, "path": str(path), "percent": round(100 * acc, 2)}
