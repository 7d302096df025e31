"""Expert trajectories (MTT `buffer.py`, DATM/FTD `buffer_FTD.py`) and their on-disk buffer.

An expert is a network trained from scratch on the real data; its flat parameter vector is
snapshotted before training and after every epoch (E+1 snapshots). MTT/DATM match short
segments of these trajectories. Format (docs/experts-format.md), one folder per buffer:

    BUF/manifest.json          network, input fingerprint, normalisation, training config, experts
    BUF/expert-00003.npy       float32 little-endian [E+1, P]  (np.save; np.load(mmap_mode="r"))
    BUF/expert-00003.json      sidecar: seed, accuracy per epoch, param count, sha256 of the .npy
    BUF/expert-00003.lock      exists only while a process trains expert 3

The sidecar is written last: an expert is complete iff its sidecar exists. Nothing is pickled
(`allow_pickle=False` everywhere; headers are parsed, never the data, to validate a file).

Damage: reading a buffer (`ExpertBuffer`) with a truncated or foreign `.npy`, a sidecar that is
not JSON, or an object-dtype array is an InputDataError naming the file. Filling it
(`train_experts`) treats such an expert as incomplete: the files are moved aside
(`*.corrupt-<timestamp>`) and the expert is retrained. Temp files of dead writers are removed,
a full disk is a ResourceError (the snapshot file is preallocated, so a memmap write can never
hit a full disk), an unusable folder an OutputError.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from .. import __version__, dist
from ..augment.dsa import DEFAULT_STRATEGY, parse_strategy
from ..checkpoint import warn_via
from ..config import Validated, non_negative, positive, unit_open
from ..errors import InputDataError, NonFiniteLoss, OutputError, UsageError, os_error
from ..faults import crash_point
from ..seeds import derive, derive_seed
from ..io.experts_schema import EXPERTS_FORMAT, ExpertsInput, ExpertsManifest, NetworkRecord, SplitRecord
from ..io.schema import Normalization
from ..io.safe_write import ensure_dir, move_aside, pid_alive, remove_dead_temps, temp_path, write_json
from ..core import RealData, RealView
from .loop import accuracy, train_epoch
from .buffer import DTYPE, MANIFEST, _sha256, complete_ids, expert_name, expert_problem
from .expert_locks import _manifest_lock, claim
from .gsam import gsam_epoch


@dataclass(frozen=True)
class ExpertConfig(Validated):
    """How each expert is trained. Defaults = MTT `buffer.py` (methods.md §6.1) except `epochs`.

    `optimizer="ftd"` is DATM's flat-trajectory expert training: GSAM (radius `rho`,
    decomposition weight `alpha`, ASAM-style element-wise scaling when `adaptive`) around the
    same plain SGD; DATM's README uses rho 0.01, alpha 0.3, 100 epochs.
    `holdout`: fraction of the input held out to measure accuracy per epoch (None: 0.05
    without `--test`, 0 with it). The split is drawn from `seed` and is the same in every process.
    """

    model: str = "convnet"
    epochs: int = positive(50)
    lr_teacher: float = positive(0.01)
    momentum: float = unit_open(0.0)
    weight_decay: float = non_negative(0.0)
    batch_train: int = positive(256)
    dsa_strategy: str | None = DEFAULT_STRATEGY     # 'none' turns DSA off
    optimizer: Literal["sgd", "ftd"] = "sgd"
    rho: float = non_negative(0.01)
    alpha: float = non_negative(0.3)
    adaptive: bool = True
    holdout: float | None = unit_open(None)
    eval_max: int = positive(10000)
    seed: int = non_negative(0)


def expert_seed(seed: int, expert: int) -> int:
    """Seed of expert `expert` in a buffer made with base `seed` (independent of process and order)."""
    return derive_seed(seed, "expert", expert)


def _write_json(path: Path, obj: dict) -> None:
    write_json(path, obj, indent=1)


# ---------------------------------------------------------------------------------------------
# Writing


def _header(real: RealData, cfg: ExpertConfig, holdout: float, test: RealData | None, param_count: int,
            n_train: int, n_held: int) -> ExpertsManifest:
    """The buffer's manifest without its bookkeeping (identity, experts, time): what a run makes."""
    c, h, w = real.image_shape
    return ExpertsManifest(
        network=NetworkRecord(name=cfg.model, channels=c, num_classes=real.num_classes, im_size=[h, w],
                              param_count=param_count),
        input=ExpertsInput(fingerprint=real.source.get("fingerprint"), urls=real.source.get("urls"),
                           num_samples=len(real), class_names=real.class_names),
        normalization=Normalization(mean=tuple(real.mean), std=tuple(real.std)),
        training={k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("holdout", "eval_max")},
        split=SplitRecord(holdout=holdout, train_samples=n_train, heldout_samples=n_held,
                          test_fingerprint=test.source.get("fingerprint") if test is not None else None))


def _refresh_manifest(out: Path, header: ExpertsManifest) -> None:
    def write() -> None:
        manifest = dataclasses.replace(header, version=__version__, identity=header.compute_identity(),
                                       experts=complete_ids(out), updated=time.time())
        _write_json(out / MANIFEST, manifest.to_dict())
    _manifest_lock(out, write)


def _check_compatible(out: Path, header: ExpertsManifest) -> None:
    """OutputError when `out` holds something else; UsageError naming what differs when it
    holds a buffer made with other settings. Compares the JSON as written (an old or damaged
    manifest is not parsed beyond its format and identity)."""
    mpath = out / MANIFEST
    if not mpath.exists():
        if any(out.iterdir()) and not any(out.glob("expert-*")):
            raise OutputError("buffer folder is not empty and holds no expert buffer; choose another -o", path=str(out))
        return
    try:
        old = json.loads(mpath.read_text())
    except ValueError:
        raise InputDataError("manifest.json is not valid JSON", path=str(mpath)) from None
    if not isinstance(old, dict) or old.get("format") != EXPERTS_FORMAT:
        raise OutputError("folder holds a manifest.json that is not an expert buffer; choose another -o",
                          path=str(out))
    if old.get("identity") != header.compute_identity():
        new = header.header()
        diff = [k for k in ("network", "normalization", "training") if old.get(k) != new[k]]
        if old.get("input", {}).get("fingerprint") != header.input.fingerprint:
            diff.append("input fingerprint")
        if old.get("split", {}).get("holdout") != header.split.holdout:
            diff.append("holdout")
        raise UsageError(f"buffer was made with different settings ({', '.join(diff) or 'split'}); "
                         "use another -o or the same settings", path=str(out))


def _remove_leftovers(out: Path) -> None:
    """Temp files and broken-lock leftovers of writers that are dead (this host's pids only)."""
    remove_dead_temps(out)
    for p in out.glob("*.lock.broken-*"):
        pid = p.name.rpartition(".broken-")[2].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)


def split_indices(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) index tensors; the same for every process given (n, holdout, seed)."""
    if not 0 <= holdout < 1:
        raise UsageError(f"holdout must be in [0, 1), got {holdout}")
    perm = torch.randperm(n, generator=derive(seed, "holdout"))
    k = int(round(holdout * n))
    return perm[k:].sort().values, perm[:k].sort().values


def train_experts(real: RealData, out: str | Path, *, num_experts: int, config: ExpertConfig = ExpertConfig(),
                  test: RealData | None = None, device: torch.device = torch.device("cpu"),
                  stale_after: float = 3600.0, progress: Callable[[int, int, str], None] | None = None,
                  log: Callable[[dict], None] | None = None) -> dict:
    """Fills buffer `out` up to `num_experts` complete experts; returns a JSON-able report.

    Complete experts are skipped, experts locked by another live process are left to it (listed
    under "busy"); several processes may run this on one buffer at once.
    """
    from ..nets import build_net
    from ..nets.functional import flat_params

    cfg = config
    warn = warn_via(log)
    log = log or (lambda _: None)
    if num_experts < 1:
        raise UsageError(f"--num-experts must be >= 1, got {num_experts}")
    if cfg.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {cfg.epochs}")
    holdout = cfg.holdout if cfg.holdout is not None else (0.0 if test is not None else 0.05)
    if test is not None and (test.image_shape != real.image_shape or test.num_classes != real.num_classes):
        raise InputDataError(f"--test has shape {test.image_shape} / {test.num_classes} classes, input has "
                             f"{real.image_shape} / {real.num_classes}")
    train_idx, held_idx = split_indices(len(real), holdout, cfg.seed)
    c, h, w = real.image_shape
    param_count = flat_params(build_net(cfg.model, c, real.num_classes, (h, w))).numel()
    header = _header(real, cfg, holdout, test, param_count, train_idx.numel(), held_idx.numel())
    out = ensure_dir(Path(out).absolute())
    if dist.is_main():                     # torchrun: rank 0 checks and tidies the buffer, then all train
        _check_compatible(out, header)
        _remove_leftovers(out)
        _refresh_manifest(out, header)
    dist.barrier()
    data = _Data(real, train_idx, held_idx, test, cfg.eval_max, device)
    shape = (cfg.epochs + 1, param_count)
    done, busy, trained = [], [], []
    t0 = time.time()
    for i in dist.spread(num_experts):     # torchrun: expert i on rank i mod W (its draws derive from i)
        if (out / expert_name(i, "json")).exists() and expert_problem(out, i, shape) is None:
            done.append(i)
            continue
        lock = claim(out, i, stale_after)
        if lock is None:
            busy.append(i)
            continue
        crash_point("experts.claimed")
        try:
            if (out / expert_name(i, "json")).exists():  # finished by another process before our claim?
                bad = expert_problem(out, i, shape)
                if bad is None:
                    done.append(i)
                    continue
                moved = [m.name for m in (move_aside(out / expert_name(i, "json")),
                                          move_aside(out / expert_name(i, "npy"))) if m is not None]
                warn(f"expert {i} is damaged ({bad[1]}); moved aside as {', '.join(moved)}, retraining", bad[0])
            meta = _train_one(out, i, data, cfg, header, device, lock, progress, log)
            trained.append(i)
            log({"event": "expert_done", "expert": i, **{k: meta[k] for k in ("seconds", "final_accuracy")}})
        finally:
            lock.unlink(missing_ok=True)
        _refresh_manifest(out, header)
    if dist.active():
        dist.barrier()
        done, busy, trained = (sorted(x for part in dist.all_gather_object(mine) for x in part)
                               for mine in (done, busy, trained))
    _refresh_manifest(out, header)
    complete = complete_ids(out)
    return {"status": "ok" if not busy else "incomplete", "buffer": str(out), "experts": len(complete),
            "trained": trained, "skipped_complete": done, "busy": busy, "epochs": cfg.epochs,
            "param_count": param_count, "optimizer": cfg.optimizer, "holdout": holdout,
            "bytes_per_expert": (cfg.epochs + 1) * param_count * 4, "seconds": round(time.time() - t0, 1)}


class _Data:
    """The training samples (a RealView, read batch by batch) and the evaluation sets on the
    training device. A `--test` set is normalised with the training input's mean/std (the
    experts' input space)."""

    def __init__(self, real: RealData, train_idx: torch.Tensor, held_idx: torch.Tensor, test: RealData | None,
                 eval_max: int, device: torch.device):
        from ..core import normalize

        self.x, self.y = RealView(real, train_idx), real.labels[train_idx].to(device)   # read per batch
        self.evals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if held_idx.numel():
            idx = held_idx[:eval_max]
            self.evals["heldout"] = (real.get(idx, device), real.labels[idx])
        if test is not None:
            idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:eval_max]
            self.evals["test"] = (normalize(test.get_u8(idx).to(device), real.mean, real.std), test.labels[idx])


def _train_one(out: Path, i: int, data: _Data, cfg: ExpertConfig, header: ExpertsManifest, device, lock: Path,
               progress, log) -> dict:
    from ..nets import build_net
    from ..nets.functional import flat_params

    net_cfg = header.network
    seed = expert_seed(cfg.seed, i)
    g = torch.Generator().manual_seed(seed)
    net = build_net(cfg.model, net_cfg.channels, net_cfg.num_classes, tuple(net_cfg.im_size),
                    generator=g).to(device)
    P = net_cfg.param_count
    npy = out / expert_name(i, "npy")
    tmp = temp_path(npy)
    snaps = _open_snapshots(tmp, npy, (cfg.epochs + 1, P))
    snaps[0] = flat_params(net).detach().cpu().numpy()
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr_teacher, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    aug = cfg.dsa_strategy if parse_strategy(cfg.dsa_strategy) else None
    acc: dict[str, list[float]] = {k: [] for k in data.evals}
    losses = []
    t0 = time.time()
    try:
        for ep in range(cfg.epochs):
            if cfg.optimizer == "ftd":
                loss = gsam_epoch(net, opt, data.x, data.y, batch_size=cfg.batch_train, generator=g, aug=aug,
                                  rho=cfg.rho, alpha=cfg.alpha, adaptive=cfg.adaptive)
            else:
                loss = train_epoch(net, opt, data.x, data.y, None, batch_size=cfg.batch_train, generator=g, aug=aug)
            if not np.isfinite(loss):
                raise NonFiniteLoss(f"expert {i}: training loss became {loss} at epoch {ep + 1}; lower lr_teacher")
            snaps[ep + 1] = flat_params(net).detach().cpu().numpy()
            crash_point("experts.epoch")
            for k, (xe, ye) in data.evals.items():
                acc[k].append(round(accuracy(net, xe, ye, device=device), 4))
                net.train()
            losses.append(round(loss, 5))
            os.utime(lock)  # heartbeat: a lock untouched for `stale_after` seconds may be broken
            log({"event": "expert_epoch", "expert": i, "epoch": ep + 1, "loss": round(loss, 4),
                 **{f"{k}_acc": v[-1] for k, v in acc.items()}})
            if progress:
                progress(ep + 1, cfg.epochs, f"expert {i}")
        try:
            snaps.flush()
            del snaps
            digest = _sha256(tmp)
            os.replace(tmp, npy)
        except OSError as e:
            raise os_error(e, npy) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crash_point("experts.npy")
    meta = {"expert": i, "seed": seed, "epochs": cfg.epochs, "lr": cfg.lr_teacher, "optimizer": cfg.optimizer,
            "param_count": P, "shape": [cfg.epochs + 1, P], "dtype": "float32 little-endian",
            "train_loss": losses, "accuracy": acc,
            "final_accuracy": {k: v[-1] for k, v in acc.items()}, "sha256": digest,
            "seconds": round(time.time() - t0, 1), "device": str(device), "host": socket.gethostname(),
            "torch": torch.__version__, "finished": time.time()}
    _write_json(out / expert_name(i, "json"), meta)  # last: marks the expert complete
    return meta


def _open_snapshots(tmp: Path, npy: Path, shape: tuple[int, int]) -> np.memmap:
    """A writable memmap [E+1, P] at `tmp` whose blocks are reserved up front: writing through a
    memmap into a full disk is a SIGBUS, not an error, so the space is claimed with fallocate and
    a full disk becomes a ResourceError (naming `npy`) before training starts."""
    try:
        snaps = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=shape)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        finally:
            os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise os_error(e, npy) from None
    return snaps


# ---------------------------------------------------------------------------------------------
# The default buffer of MTT/DATM runs without --experts


def default_buffer_dir(real: RealData, cfg: ExpertConfig, cache_dir: Path) -> Path:
    """spec.cache_dir/experts/<input fingerprint>-<config hash>/ (reused by later runs)."""
    fp = str(real.source.get("fingerprint", "nofp")).split(":")[-1][:24]
    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "experts" / f"{fp}-{h}"
