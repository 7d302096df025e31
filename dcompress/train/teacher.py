"""The teacher: a network trained on the full input, for soft labels and selection features.

Pretrained weights cannot be downloaded, so the teacher is trained here, once per input
(cached by the input's content fingerprint and the teacher config), or loaded from
`--teacher PATH` (a state dict saved by dcompress, read with `weights_only=True`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputDataError
from ..types import EvalProtocol, RealData, RunSpec
from .loop import train_epoch


@dataclass(frozen=True)
class TeacherConfig:
    """Defaults sized for CPU: ConvNet-3 at width 32, 2 epochs on up to 20k samples (a few
    minutes on 2 cores). Raise them (or pass --teacher) for better soft labels and features."""

    model: str = "convnet_w32"
    epochs: int = 2
    max_samples: int = 20000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0


@dataclass
class Teacher:
    net: torch.nn.Module
    info: dict

    @torch.no_grad()
    def logits(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        from .loop import predict

        return predict(self.net, images, device=device)

    @torch.no_grad()
    def features(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        from .loop import predict

        return predict(self.net, images, device=device, embed=True)


def _cfg_hash(cfg: TeacherConfig) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def teacher_cache_path(real: RealData, cfg: TeacherConfig, cache_dir: Path) -> Path:
    fp = real.source.get("fingerprint", "nofp").split(":")[-1][:24]
    return Path(cache_dir) / "teachers" / f"{fp}-{_cfg_hash(cfg)}.pt"


def load_teacher_net(model: str, path: str | Path, image_shape, num_classes: int,
                     device: torch.device) -> torch.nn.Module:
    """Builds `model` and loads a saved teacher state dict (weights only, no unpickling)."""
    from ..nets import build_net

    c, h, w = image_shape
    net = build_net(model, c, num_classes, (h, w))
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(device).eval()


def get_teacher(real: RealData, spec: RunSpec, cfg: TeacherConfig = TeacherConfig(), log=None) -> Teacher:
    """Loads `spec.teacher`, or the cached teacher for this input, or trains and caches one."""
    from ..nets import build_net

    c, h, w = real.image_shape
    if spec.teacher is not None:
        path = Path(spec.teacher)
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise InputDataError("teacher checkpoint needs the .pt file and its .json sidecar", path=str(path))
        meta = json.loads(meta_path.read_text())
        net = load_teacher_net(meta["model"], path, real.image_shape, real.num_classes, spec.device)
        return Teacher(net, {**meta, "path": str(path), "source": "user"})
    path = teacher_cache_path(real, cfg, spec.cache_dir)
    if path.exists() and path.with_suffix(".json").exists():
        meta = json.loads(path.with_suffix(".json").read_text())
        net = load_teacher_net(cfg.model, path, real.image_shape, real.num_classes, spec.device)
        return Teacher(net, {**meta, "path": str(path), "source": "cache"})
    t0 = time.time()
    g = torch.Generator().manual_seed(cfg.seed)
    net = build_net(cfg.model, c, real.num_classes, (h, w), generator=g).to(spec.device)
    n = len(real)
    idx = torch.randperm(n, generator=g)[:min(cfg.max_samples, n)]
    x = real.get(idx, spec.device)
    y = real.labels[idx].to(spec.device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for ep in range(cfg.epochs):
        loss = train_epoch(net, opt, x, y, None, batch_size=cfg.batch_size, generator=g)
        if spec.progress:
            spec.progress(ep + 1, cfg.epochs, "teacher")
        if log:
            log({"event": "teacher_epoch", "epoch": ep + 1, "loss": round(loss, 4)})
    net.eval()
    from .loop import predict

    train_acc = float((predict(net, x, device=spec.device).argmax(1) == y.cpu()).float().mean())
    meta = {"model": cfg.model, "config": dataclasses.asdict(cfg), "train_samples": int(idx.numel()),
            "train_accuracy": round(train_acc, 4), "train_seconds": round(time.time() - t0, 1),
            "input_fingerprint": real.source.get("fingerprint")}
    path.parent.mkdir(parents=True, exist_ok=True)
    # sidecar first, checkpoint last, both by rename: a reader that sees the .pt sees a whole .json
    tmp_meta = path.with_name(path.stem + f".json.tmp-{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, path.with_suffix(".json"))
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return Teacher(net, {**meta, "path": str(path), "source": "trained"})


def selection_protocol(soft: bool) -> EvalProtocol:
    """Evaluation protocol for real-sample selections: the DC protocol (300 epochs, no aug)."""
    return EvalProtocol(name="dc-soft" if soft else "dc", epochs=300, soft_labels=soft)


def teacher_features(teacher: Teacher, real: RealData, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate embeddings of every real sample [N, D] (float32, CPU), cached next to
    the teacher checkpoint so repeated selections on the same input skip the forward passes."""
    import numpy as np

    path = teacher.info.get("path")
    cache = Path(path).with_suffix(".features.npy") if path else None
    if cache is not None and cache.exists():
        arr = np.load(cache, allow_pickle=False)
        if arr.shape[0] == len(real):
            return torch.from_numpy(arr.astype(np.float32))
    outs = []
    for start in range(0, len(real), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(real)))
        outs.append(teacher.features(real.get(idx, device), device))
    feats = torch.cat(outs)
    if cache is not None:
        tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}.npy")
        np.save(tmp, feats.numpy(), allow_pickle=False)
        os.replace(tmp, cache)
    return feats
