"""The teacher: a network trained on the full input, for soft labels and selection features.

Pretrained weights cannot be downloaded, so the teacher is trained here, once per input
(cached by the input's content fingerprint and the teacher config), or loaded from
`--teacher PATH` (a state dict saved by dcompress, read with `weights_only=True`).

Cache entries are written atomically (`io.safe_write`: a full disk is a ResourceError) and a
damaged one is moved aside and retrained; a damaged `--teacher` is the user's input, so it is
an InputDataError (exit 4) naming the file, and the file is never touched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import warn_via
from ..config import Validated, non_negative, positive, unit_open
from .. import dist
from ..errors import DcompressError, InputDataError, UsageError
from ..faults import crash_point
from ..seeds import derive
from ..io.safe_write import ensure_dir, load_failure, move_aside, np_save, remove_dead_temps, torch_save, write_json
from ..core import RealData, RealView, RunSpec
from ..io.schema import EvalProtocol
from .loop import train_epoch


@dataclass(frozen=True)
class TeacherConfig(Validated):
    """Defaults that reach a useful accuracy on a CPU in minutes: ConvNet-3 at width 32 on every
    input sample but `val_samples` held out (their accuracy is the teacher's `val_accuracy`),
    `epochs` passes with the lr annealed to 0 on a cosine. `max_samples`: train on a seeded
    subset of this size (None: all). docs/teacher.md has the measured accuracy and time."""

    model: str = "convnet_w32"
    epochs: int = positive(6)
    max_samples: int | None = positive(None)
    val_samples: int = non_negative(2000)
    lr: float = positive(0.01)
    momentum: float = unit_open(0.9)
    weight_decay: float = non_negative(5e-4)
    batch_size: int = positive(128)
    seed: int = non_negative(0)


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


def _cfg_hash(cfg: TeacherConfig, arch: str) -> str:
    """Hash of the config and the resolved architecture (`nets.arch_name`: the ConvNet depth
    chosen for the input size), so a cached teacher is only ever loaded into its own network."""
    key = {**dataclasses.asdict(cfg), "arch": arch}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def teacher_cache_path(real: RealData, cfg: TeacherConfig, cache_dir: Path) -> Path:
    from ..nets import arch_name

    fp = real.source.get("fingerprint", "nofp").split(":")[-1][:24]
    return Path(cache_dir) / "teachers" / f"{fp}-{_cfg_hash(cfg, arch_name(cfg.model, real.image_shape[1:]))}.pt"


def load_teacher_net(model: str, path: str | Path, image_shape, num_classes: int,
                     device: torch.device) -> torch.nn.Module:
    """Builds `model` and loads a saved teacher state dict (weights only, no unpickling).

    Raises:
        InputDataError naming `path` when the file is missing, unreadable, not a state dict
        `weights_only` accepts, or a state dict of another shape or network.
    """
    from ..nets import build_net

    c, h, w = image_shape
    try:
        net = build_net(model, c, num_classes, (h, w))
    except DcompressError as e:
        raise InputDataError(f"teacher network {model!r} cannot be built: {e.detail}", path=str(path)) from None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputDataError(f"cannot read teacher checkpoint: {e.strerror or e}", path=str(path)) from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a state dict")
        net.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - truncated, refused pickle, wrong keys/shapes: all unusable
        reason = load_failure(e)
        raise InputDataError(f"not a usable {model} teacher state dict for {c}x{h}x{w} inputs and {num_classes} "
                             f"classes ({reason})", path=str(path)) from None
    return net.to(device).eval()


def read_sidecar(path: Path) -> dict:
    """The teacher's `.json` sidecar; InputDataError naming it when missing, not JSON, or without "model"."""
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputDataError("teacher sidecar is missing (a teacher needs the .pt file and its .json sidecar)",
                             path=str(path)) from None
    except OSError as e:
        raise InputDataError(f"cannot read teacher sidecar: {e.strerror or e}", path=str(path)) from None
    except ValueError as e:
        raise InputDataError(f"teacher sidecar is not valid JSON ({e})", path=str(path)) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise InputDataError('teacher sidecar has no "model" name', path=str(path), key="model")
    return meta


def get_teacher(real: RealData, spec: RunSpec, cfg: TeacherConfig | None = None, log=None) -> Teacher:
    """Loads `spec.teacher`, or the cached teacher for this input, or trains and caches one
    (`cfg`, else `spec.teacher_config`, else the defaults); reports the stage's time as a
    `{"event": "stage", "stage": "teacher"}` log record."""
    cfg = cfg or spec.teacher_config or TeacherConfig()
    t0 = time.time()
    teacher = _get_teacher(real, spec, cfg, log)
    if log:
        log({"event": "stage", "stage": "teacher", "seconds": round(time.time() - t0, 2),
             "source": teacher.info.get("source"), "path": teacher.info.get("path")})
    return teacher


def _get_teacher(real: RealData, spec: RunSpec, cfg: TeacherConfig, log) -> Teacher:
    """Loads `spec.teacher`, or the cached teacher for this input, or trains and caches one.

    A user's `--teacher` that is missing or unusable is an InputDataError (the file is left
    alone); an unusable cache entry is moved aside (`*.corrupt-<timestamp>`) and retrained.
    """
    if spec.teacher is not None:
        path = Path(spec.teacher)
        if not path.is_file():
            raise InputDataError("teacher checkpoint not found (--teacher needs the .pt file and its .json "
                                 "sidecar)", path=str(path))
        meta = read_sidecar(path.with_suffix(".json"))
        check_teacher_fits(meta, path, real)
        net = load_teacher_net(meta["model"], path, real.image_shape, real.num_classes, spec.device)
        return Teacher(net, {**meta, "path": str(path), "source": "user"})
    path = teacher_cache_path(real, cfg, spec.cache_dir)
    if dist.active():                    # torchrun: every rank trains it together, rank 0 caches it
        found = _cached(path, real, spec, cfg, log)
        return found if found is not None else _train(path, real, spec, cfg, log)
    from ..io.atomic import made_once

    note = (lambda text: log({"event": "note", "text": text})) if log else None
    # processes that want it at once (frontier ranks, each on its own points): one trains it, the others load it
    return made_once(path.with_suffix(".lock"), lambda: _cached(path, real, spec, cfg, log),
                     lambda: _train(path, real, spec, cfg, log), note=note, what="training this teacher")


def _cached(path: Path, real: RealData, spec: RunSpec, cfg: TeacherConfig, log) -> Teacher | None:
    if path.exists() and path.with_suffix(".json").exists():
        try:
            meta = read_sidecar(path.with_suffix(".json"))
            net = load_teacher_net(cfg.model, path, real.image_shape, real.num_classes, spec.device)
            return Teacher(net, {**meta, "path": str(path), "source": "cache"})
        except InputDataError as e:
            _discard_cache_entry(path, e, log)
    return None


def _train(path: Path, real: RealData, spec: RunSpec, cfg: TeacherConfig, log) -> Teacher:
    """Trains the teacher of `cfg` on `real` and caches it at `path` (rank 0 under torchrun)."""
    from ..nets import build_net

    c, h, w = real.image_shape
    t0 = time.time()
    g = derive(cfg.seed, "teacher")
    net = build_net(cfg.model, c, real.num_classes, (h, w), generator=g).to(spec.device)
    parallel = teacher_parallel(net, cfg)
    n = len(real)
    perm = torch.randperm(n, generator=g)
    n_val = cfg.val_samples if n >= 4 * cfg.val_samples else 0   # a small input keeps every sample for training
    val_idx, idx = perm[:n_val], perm[n_val:]
    idx = idx[:cfg.max_samples] if cfg.max_samples is not None else idx
    x = RealView(real, idx)                       # batches are read and normalised as they are trained
    y = real.labels[idx].to(spec.device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    for ep in range(cfg.epochs):
        loss = train_epoch(net, opt, x, y, None, batch_size=cfg.batch_size, generator=g, parallel=parallel)
        sched.step()
        if spec.progress:
            spec.progress(ep + 1, cfg.epochs, "teacher")
        if log:
            log({"event": "teacher_epoch", "epoch": ep + 1, "loss": round(loss, 4)})
    net.eval()
    from .loop import predict

    # torchrun: each rank predicts whole batches of the training samples (dist.map_batches)
    pred = dist.map_batches(len(idx), 1024, lambda lo, hi: predict(net, RealView(real, idx[lo:hi]),
                                                                    device=spec.device).argmax(1))
    train_acc = float((pred == y.cpu()).float().mean())
    val_acc = None
    if n_val:
        pred = dist.map_batches(n_val, 1024, lambda lo, hi: predict(net, RealView(real, val_idx[lo:hi]),
                                                                      device=spec.device).argmax(1))
        val_acc = round(float((pred == real.labels[val_idx]).float().mean()), 4)
    meta = {"model": cfg.model, "arch": net.arch, "config": dataclasses.asdict(cfg), "train_samples": int(idx.numel()),
            "train_accuracy": round(train_acc, 4), "val_samples": int(n_val), "val_accuracy": val_acc,
            "train_seconds": round(time.time() - t0, 1),
            "input_fingerprint": real.source.get("fingerprint"), "image_shape": list(real.image_shape),
            "num_classes": real.num_classes, "class_names": list(real.class_names)}
    if dist.is_main():                 # torchrun: every rank holds the same network; rank 0 caches it
        ensure_dir(path.parent)
        remove_dead_temps(path.parent)
        # sidecar first, checkpoint last, both by rename: a reader that sees the .pt sees a whole .json
        write_json(path.with_suffix(".json"), meta)
        crash_point("teacher.save")
        torch_save(path, net.state_dict())
    dist.barrier()
    return Teacher(net, {**meta, "path": str(path), "source": "trained"})


def teacher_parallel(net: torch.nn.Module, cfg: TeacherConfig) -> "dist.BatchParallel":
    """Under torchrun the teacher trains data-parallel: each batch split over the ranks, the
    gradients summed (`train_epoch`); the one-process network up to float rounding. A BatchNorm
    teacher would normalise each rank's block by its own statistics (torch's SyncBatchNorm runs
    on GPUs only): refused, so train it as one process and pass it with --teacher."""
    from ..nets import has_batchnorm

    bp = dist.BatchParallel()
    if bp.active and has_batchnorm(net):
        raise UsageError(f"the teacher {cfg.model} has BatchNorm layers, which cannot be trained split over "
                         "processes here (their statistics would be per process); train it as one process "
                         "(`dcompress teacher ... --bn`) and pass it with --teacher", key="model")
    return bp


def check_teacher_fits(meta: dict, path: Path, real: RealData) -> None:
    """InputDataError (exit 4) naming the sidecar key when a teacher's recorded input (image shape,
    number of classes, class names) differs from `real`, or when the sidecar records a weights
    digest (`dcompress teacher` writes one) that the .pt file does not match. Sidecars of older
    teachers lack these keys: their state dict is still checked against the network's shapes."""
    side = str(path.with_suffix(".json"))
    shape = meta.get("image_shape")
    if shape is not None and list(shape) != list(real.image_shape):
        raise InputDataError(f"teacher was trained on {'x'.join(map(str, shape))} images, the input's are "
                             f"{'x'.join(map(str, real.image_shape))} (CxHxW)", path=side, key="image_shape")
    n = meta.get("num_classes")
    if n is not None and n != real.num_classes:
        raise InputDataError(f"teacher has {n} classes, the input has {real.num_classes}", path=side,
                             key="num_classes")
    names = meta.get("class_names")
    if names is not None and list(names) != list(real.class_names):
        raise InputDataError(f"teacher's class names {_short_list(names)} differ from the input's "
                             f"{_short_list(real.class_names)} (same classes, other order or names)", path=side,
                             key="class_names")
    digest = meta.get("weights_sha256")
    if digest is not None:
        try:
            have = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise InputDataError(f"cannot read teacher checkpoint: {e.strerror or e}", path=str(path)) from None
        if have != digest:
            raise InputDataError("teacher checkpoint does not match its sidecar's weights_sha256 (the .pt and "
                                 ".json come from different teachers, or the .pt is damaged)", path=str(path),
                                 key="weights_sha256")


def _short_list(items) -> str:
    items = list(items)
    return repr(items[:5])[:-1] + (", ...]" if len(items) > 5 else "]")


def _discard_cache_entry(path: Path, err: InputDataError, log) -> None:
    """Moves an unusable cached teacher (and its sidecar) aside; drops feature caches made from it."""
    moved = [m for m in (move_aside(path), move_aside(path.with_suffix(".json"))) if m is not None]
    for feats in path.parent.glob(path.stem + ".features*.npy"):
        feats.unlink(missing_ok=True)
    warn_via(log)(f"unusable cached teacher ({err.detail}); moved to {', '.join(m.name for m in moved)}, "
                  "training a new one", path)


def selection_protocol(soft: bool) -> EvalProtocol:
    """Evaluation protocol for real-sample selections: the DC protocol (300 epochs, no aug)."""
    return EvalProtocol(name="dc-soft" if soft else "dc", epochs=300, soft_labels=soft)


def _features_cache(teacher: Teacher, real: RealData) -> Path | None:
    """`<teacher>.features-<key>.npy`, keyed by the input fingerprint and the teacher file's size
    and mtime: a user's teacher file can serve several inputs, and be overwritten."""
    path = teacher.info.get("path")
    if not path:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{real.source.get('fingerprint')}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(path).with_suffix(f".features-{key}.npy")


def teacher_features(teacher: Teacher, real: RealData, device: torch.device, batch_size: int = 1024,
                     log=None) -> torch.Tensor:
    """Penultimate embeddings of every real sample, timed as a `{"event": "stage", "stage":
    "features"}` log record (see `_teacher_features`)."""
    t0 = time.time()
    feats = _teacher_features(teacher, real, device, batch_size)
    if log:
        log({"event": "stage", "stage": "features", "seconds": round(time.time() - t0, 2)})
    return feats


def _teacher_features(teacher: Teacher, real: RealData, device: torch.device, batch_size: int) -> torch.Tensor:
    """Penultimate embeddings of every real sample [N, D] (float32, CPU), cached next to
    the teacher checkpoint so repeated selections on the same input skip the forward passes.
    An unreadable cache is recomputed; a full disk while writing it is a ResourceError."""
    import numpy as np

    cache = _features_cache(teacher, real)
    if cache is not None and cache.exists():
        try:
            arr = np.load(cache, allow_pickle=False)
            if arr.ndim == 2 and arr.shape[0] == len(real) and arr.dtype.kind == "f":
                return torch.from_numpy(arr.astype(np.float32))
        except (OSError, ValueError, EOFError):
            pass  # truncated or foreign: recomputed and overwritten below
    # torchrun: whole batches per rank, all-gathered
    feats = dist.map_batches(len(real), batch_size,
                             lambda lo, hi: teacher.features(real.get(torch.arange(lo, hi), device), device))
    if cache is not None and dist.is_main():
        crash_point("teacher.features")
        np_save(cache, feats.numpy())
    return feats
