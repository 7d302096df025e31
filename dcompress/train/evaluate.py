"""`dcompress evaluate`: train fresh networks on a compressed set with its own protocol and
report test accuracy, next to a class-matched random real subset trained the same way."""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from .. import dist
from ..errors import InputDataError, UsageError
from ..loader import CompressedDataset, load
from ..seeds import derive
from ..core import RealData, normalize
from .loop import accuracy, train_on_set


def _summary(accs: list[float]) -> dict:
    return {"mean": round(100 * statistics.fmean(accs), 2),
            "std": round(100 * statistics.pstdev(accs), 2) if len(accs) > 1 else 0.0,
            "runs": [round(100 * a, 2) for a in accs]}


def evaluate(out: str | Path | CompressedDataset, test: RealData, *, train: RealData | None = None, runs: int = 3,
             model: str | None = None, epochs: int | None = None, seed: int = 0,
             device: torch.device = torch.device("cpu"), random_baseline: bool = True,
             test_limit: int | None = None, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Returns {"compressed": {...}, "random": {...} | None, "protocol": {...}, ...}.

    The test images are normalised with the compressed set's (training-set) mean/std. The
    random baseline draws, per run, as many real images per class as the compressed set has,
    and trains them with the same protocol; when the set's protocol uses teacher soft labels,
    the baseline gets the same teacher's logits (DD-Ranking's fairness point), else hard labels.
    A learned lr (MTT/DATM) is specific to its synthetic set: the baseline uses the protocol's lr.
    """
    if runs < 1:
        raise UsageError(f"--runs must be >= 1, got {runs}")
    if test_limit is not None and test_limit < 1:
        raise UsageError(f"--test-limit must be >= 1, got {test_limit}")
    ds = out if isinstance(out, CompressedDataset) else load(out)
    proto = ds.protocol
    if model is not None:
        proto = dataclasses.replace(proto, model=model)
    if epochs is not None:
        proto = dataclasses.replace(proto, epochs=epochs)
    test_where = (test.source.get("urls") or ["--test"])[0]
    if list(test.image_shape) != list(ds.images.shape[1:]):
        raise InputDataError(f"test images are {test.image_shape} (CxHxW), the compressed set's are "
                             f"{tuple(ds.images.shape[1:])}", path=test_where)
    if int(test.labels.max()) >= len(ds.classes):
        raise InputDataError(f"test label {int(test.labels.max())} is outside the compressed set's "
                             f"{len(ds.classes)} classes", path=test_where)
    n_test = len(test) if test_limit is None else min(test_limit, len(test))
    tg = derive(seed, "test-subset")
    tidx = torch.randperm(len(test), generator=tg)[:n_test] if n_test < len(test) else torch.arange(len(test))
    x_test = normalize(test.get_u8(tidx), ds.mean, ds.std)
    y_test = test.labels[tidx]
    lr = ds.lr if (proto.use_learned_lr and ds.lr is not None) else proto.lr
    t0 = time.time()
    accs = {}
    for r in dist.spread(runs):              # torchrun: runs spread over ranks, each run's draws derived
        g = derive(seed, "eval-compressed", r)
        net = train_on_set(ds.images, ds.labels, num_classes=len(ds.classes), protocol=proto, generator=g,
                           device=device, soft=ds.logits, lr=lr,
                           progress=(lambda a, b, r=r: progress(a, b, f"compressed run {r + 1}/{runs}")) if progress else None)
        accs[r] = accuracy(net, x_test, y_test, device=device)
    accs = dist.gather_runs(accs, runs)
    report = {"compressed": _summary(accs), "random": None, "protocol": {**dataclasses.asdict(proto), "lr_used": lr},
              "samples": len(ds), "test_samples": n_test,
              "method": ds.block.method.name if ds.block.method else None,
              "seconds": {"compressed": round(time.time() - t0, 1)}}
    if not random_baseline:
        return report
    if train is None:
        raise InputDataError("the random baseline needs the training shards (manifest source urls are gone?); "
                             "pass --train URLS or --no-random")
    counts = torch.bincount(ds.labels, minlength=len(ds.classes)).tolist()
    soft_teacher = None
    note = "hard labels"
    if proto.soft_labels:
        soft_teacher = _teacher_from_manifest(ds, train, device)
        note = "teacher soft labels" if soft_teacher is not None else "hard labels (teacher not available)"
    base_proto = dataclasses.replace(proto, soft_labels=soft_teacher is not None)
    t1 = time.time()
    accs = {}
    for r in dist.spread(runs):
        g = derive(seed, "eval-random", r)
        idx = torch.cat([train.sample_class(c, n, g) for c, n in enumerate(counts) if n > 0])
        x = normalize(train.get_u8(idx), ds.mean, ds.std)
        y = train.labels[idx]
        soft = soft_teacher.logits(x, device) if soft_teacher is not None else None
        net = train_on_set(x, y, num_classes=len(ds.classes), protocol=base_proto, generator=g, device=device,
                           soft=soft, lr=proto.lr,
                           progress=(lambda a, b, r=r: progress(a, b, f"random run {r + 1}/{runs}")) if progress else None)
        accs[r] = accuracy(net, x_test, y_test, device=device)
    accs = dist.gather_runs(accs, runs)
    report["random"] = {**_summary(accs), "labels": note}
    report["delta"] = round(report["compressed"]["mean"] - report["random"]["mean"], 2)
    report["seconds"]["random"] = round(time.time() - t1, 1)
    return report


def _teacher_from_manifest(ds, train: RealData, device: torch.device):
    from .teacher import Teacher, load_teacher_net

    from ..core import default_paths

    info = ds.block.labels.teacher or {}
    path, model = info.get("path"), info.get("model")
    if not isinstance(path, str) or not isinstance(model, str):
        return None
    # a path read from a manifest is data: only a teacher inside our own cache is ever loaded
    cache = default_paths()["cache"].resolve()
    path = Path(path).resolve()
    if cache not in path.parents or not path.is_file():
        return None
    try:
        return Teacher(load_teacher_net(model, path, train.image_shape, len(ds.classes), device), info)
    except Exception:  # noqa: BLE001 - an unusable cached teacher: the baseline falls back to hard labels
        return None
