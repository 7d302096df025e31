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
import torch.nn.functional as F

from .. import __version__
from ..augment.dsa import DEFAULT_STRATEGY
from ..checkpoint import warn_via
from ..errors import InputDataError, NonFiniteLoss, OutputError, UsageError
from ..faults import crash_point
from ..io.safe_write import (ensure_dir, move_aside, os_error, pid_alive, remove_dead_temps, temp_path,
                             write_json)
from ..core import RealData
from .loop import accuracy, train_epoch

FORMAT = "dcompress-experts"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPE = "<f4"


@dataclass(frozen=True)
class ExpertConfig:
    """How each expert is trained. Defaults = MTT `buffer.py` (methods.md §6.1) except `epochs`.

    `optimizer="ftd"` is DATM's flat-trajectory expert training: GSAM (radius `rho`,
    decomposition weight `alpha`, ASAM-style element-wise scaling when `adaptive`) around the
    same plain SGD; DATM's README uses rho 0.01, alpha 0.3, 100 epochs.
    `holdout`: fraction of the input held out to measure accuracy per epoch (None: 0.05
    without `--test`, 0 with it). The split is drawn from `seed` and is the same in every process.
    """

    model: str = "convnet"
    epochs: int = 50
    lr_teacher: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_train: int = 256
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    optimizer: Literal["sgd", "ftd"] = "sgd"
    rho: float = 0.01
    alpha: float = 0.3
    adaptive: bool = True
    holdout: float | None = None
    eval_max: int = 10000
    seed: int = 0


def expert_seed(seed: int, expert: int) -> int:
    """Seed of expert `expert` in a buffer made with base `seed` (independent of process and order)."""
    return int.from_bytes(hashlib.sha256(f"dcompress-expert:{seed}:{expert}".encode()).digest()[:7], "little")


def expert_name(expert: int, suffix: str) -> str:
    return f"expert-{expert:05d}.{suffix}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    write_json(path, obj, indent=1)


def expert_problem(out: Path, expert: int, shape: tuple[int, int]) -> tuple[Path, str] | None:
    """(file, what is wrong) when expert `expert` of buffer `out` is not a whole, readable expert
    of `shape` [E+1, P]; None when its sidecar is a JSON object and its `.npy` header says float32
    little-endian `shape` with exactly the bytes that implies. Reads headers only (no unpickling)."""
    side, npy = out / expert_name(expert, "json"), out / expert_name(expert, "npy")
    try:
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict):
            return side, "sidecar is not a JSON object"
    except FileNotFoundError:
        return side, "sidecar is missing"
    except (OSError, ValueError) as e:
        return side, f"sidecar is not valid JSON ({e})"
    try:
        with open(npy, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_2_0 if version >= (2, 0) else np.lib.format.read_array_header_1_0
            found, fortran, dtype = read(f)
            offset = f.tell()
        size = npy.stat().st_size
    except FileNotFoundError:
        return npy, "snapshot file is missing"
    except (OSError, ValueError, EOFError) as e:
        return npy, f"not a readable .npy file ({e})"
    if dtype != np.dtype(DTYPE) or tuple(found) != tuple(shape) or fortran:
        return npy, f"expected {DTYPE} {tuple(shape)} C-order, found {dtype.str} {tuple(found)}"
    if size != offset + int(np.prod(shape)) * 4:
        return npy, f"file is {size} bytes, expected {offset + int(np.prod(shape)) * 4} (truncated?)"
    return None


# ---------------------------------------------------------------------------------------------
# Reading


class ExpertBuffer:
    """Read-only view of a buffer folder; snapshots are memory-mapped, never loaded whole.

    Attributes:
        config: the parsed manifest.json (network, input, normalization, training, split).
        network: manifest["network"]: name, channels, num_classes, im_size, param_count.
        ids: ids of the complete experts (those with a sidecar), ascending.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        try:
            self.config = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise InputDataError("not an expert buffer (no manifest.json); create one with `dcompress experts`",
                                 path=str(self.path)) from None
        except json.JSONDecodeError as e:
            raise InputDataError(f"manifest.json is not valid JSON ({e})", path=str(mpath)) from None
        except OSError as e:
            raise InputDataError(f"cannot read manifest.json ({e.strerror or e})", path=str(mpath)) from None
        if not isinstance(self.config, dict) or self.config.get("format") != FORMAT:
            raise InputDataError(f"manifest.json is not a {FORMAT} manifest", path=str(mpath), key="format")
        try:
            version = self.config.get("format_version", 0)
            if not isinstance(version, int) or isinstance(version, bool):
                raise InputDataError(f"must be an integer, found {version!r}", path=str(mpath), key="format_version")
            if version > FORMAT_VERSION:
                raise InputDataError(f"buffer format {version} is newer than this dcompress ({FORMAT_VERSION})",
                                     path=str(mpath), key="format_version")
            self.network: dict = self.config["network"]
            self.epochs: int = int(self.config["training"]["epochs"])
            self.param_count: int = int(self.network["param_count"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputDataError(f"manifest.json lacks a valid network/training entry ({e!r})",
                                 path=str(mpath)) from None
        from ..nets import NetConfigError, _resolve

        try:
            _resolve(str(self.network.get("name")), {})
        except NetConfigError as e:
            raise InputDataError(f"buffer was made with a network this dcompress does not know ({e})",
                                 path=str(mpath), key="network.name") from None
        self.ids = complete_ids(self.path)
        for i in self.ids:   # headers only: a damaged expert fails here, not hours into a run
            bad = expert_problem(self.path, i, (self.epochs + 1, self.param_count))
            if bad is not None:
                raise InputDataError(f"expert {i} is damaged: {bad[1]}; delete its .npy and .json and "
                                     "rerun `dcompress experts` to retrain it", path=str(bad[0]))
        self._maps: dict[int, np.ndarray] = {}

    @property
    def num_experts(self) -> int:
        return len(self.ids)

    def meta(self, expert: int) -> dict:
        """The sidecar of the `expert`-th complete expert (0-based position in `ids`)."""
        p = self.path / expert_name(self.ids[expert], "json")
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise InputDataError(f"sidecar is not readable JSON ({e})", path=str(p)) from None

    def trajectory(self, expert: int) -> np.ndarray:
        """Memory-mapped float32 [E+1, P] array of the `expert`-th complete expert (read-only)."""
        if expert not in self._maps:
            if not 0 <= expert < self.num_experts:
                raise UsageError(f"expert {expert} out of range: buffer has {self.num_experts} complete experts")
            p = self.path / expert_name(self.ids[expert], "npy")
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise InputDataError(f"not a readable float32 .npy ({e})", path=str(p)) from None
            if arr.dtype != np.dtype(DTYPE) or arr.shape != (self.epochs + 1, self.param_count):
                raise InputDataError(f"expected {DTYPE} {(self.epochs + 1, self.param_count)}, found {arr.dtype} "
                                     f"{arr.shape}", path=str(p))
            self._maps[expert] = arr
        return self._maps[expert]

    def snapshot(self, expert: int, epoch: int) -> torch.Tensor:
        """Flat parameters [P] (float32, CPU) of expert `expert` after `epoch` epochs (0 = init)."""
        if not 0 <= epoch <= self.epochs:
            raise UsageError(f"epoch {epoch} out of range: experts have snapshots 0..{self.epochs}")
        return torch.from_numpy(np.array(self.trajectory(expert)[epoch], dtype=np.float32))

    def verify(self, expert: int) -> bool:
        """True when the .npy still matches the sha256 recorded in its sidecar."""
        return _sha256(self.path / expert_name(self.ids[expert], "npy")) == self.meta(expert)["sha256"]


def complete_ids(path: Path) -> list[int]:
    """Expert ids whose sidecar and .npy both exist (the sidecar marks completion)."""
    ids = []
    for p in Path(path).glob("expert-*.json"):
        stem = p.name[len("expert-"):-len(".json")]
        if stem.isdigit() and (p.with_suffix(".npy")).exists():
            ids.append(int(stem))
    return sorted(ids)


# ---------------------------------------------------------------------------------------------
# Locks: claim an expert with an exclusive create; break locks of dead or silent owners.


def _lock_owner_alive(info: dict) -> bool:
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return True                      # cannot tell from here; rely on the heartbeat age
    try:
        return pid_alive(int(info["pid"]))
    except (KeyError, ValueError, TypeError):
        return True


def _stale_content(lock: Path, stale_after: float) -> str | None:
    """The lock's content when the lock is stale (owner dead on this host, or no heartbeat for
    `stale_after` seconds), else None."""
    try:
        text = lock.read_text()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return text if age > min(60.0, stale_after) else None  # half-written by a live claimer, or garbage
    if not _lock_owner_alive(info) or age > stale_after:
        return text
    return None


def claim(out: Path, expert: int, stale_after: float = 3600.0) -> Path | None:
    """Creates `expert-XXXXX.lock` exclusively; returns its path, or None when another live process
    holds it. A stale lock is moved aside (rename is atomic, so only one breaker wins) and re-checked."""
    lock = out / expert_name(expert, "lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            stale = _stale_content(lock, stale_after)
            if stale is None:
                return None
            outcome = _break(lock, stale)
            if outcome == "taken":           # we moved a fresh lock someone just took: it is back
                return None
            if outcome == "broken":
                for tmp in out.glob(expert_name(expert, "npy") + ".tmp-*"):
                    tmp.unlink(missing_ok=True)  # partial output of the dead owner
            continue
        except OSError as e:
            raise os_error(e, lock, "create lock") from None
        _write_lock(fd, lock, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        return lock
    return None


def _write_lock(fd: int, lock: Path, info: dict) -> None:
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
    except OSError as e:
        lock.unlink(missing_ok=True)
        raise os_error(e, lock, "write lock") from None


def _break(lock: Path, stale: str) -> Literal["broken", "gone", "taken"]:
    """Moves a stale lock aside (rename is atomic: of two breakers one wins): "broken" when the
    lock we moved was the stale one, "gone" when it had vanished, "taken" when a fresh lock had
    replaced it meanwhile (it is put back)."""
    moved = lock.with_name(f"{lock.name}.broken-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(lock, moved)
    except FileNotFoundError:
        return "gone"
    if moved.read_text() != stale:
        try:
            os.link(moved, lock)
        except FileExistsError:
            pass
        moved.unlink()
        return "taken"
    moved.unlink()
    return "broken"


def _manifest_lock(out: Path, fn: Callable[[], None], timeout: float = 30.0) -> None:
    """Runs `fn` holding `manifest.lock` (a short critical section). The lock names its pid: one
    left by a dead process on this host is broken at once, any other after `timeout` seconds."""
    lock = out / "manifest.lock"
    t0 = time.time()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            stale = _stale_content(lock, timeout)
            if stale is not None:
                _break(lock, stale)
                continue
            if time.time() - t0 > 4 * timeout:
                raise UsageError("manifest.lock held for too long; remove it if no dcompress process runs",
                                 path=str(lock)) from None
            time.sleep(0.05)
        except OSError as e:
            raise os_error(e, lock, "create lock") from None
    try:
        _write_lock(fd, lock, {"pid": os.getpid(), "host": socket.gethostname()})
        crash_point("experts.manifest")
        fn()
    finally:
        lock.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Writing


def _header(real: RealData, cfg: ExpertConfig, holdout: float, test: RealData | None, param_count: int,
            n_train: int, n_held: int) -> dict:
    c, h, w = real.image_shape
    return {
        "network": {"name": cfg.model, "channels": c, "num_classes": real.num_classes, "im_size": [h, w],
                    "param_count": param_count},
        "input": {"fingerprint": real.source.get("fingerprint"), "urls": real.source.get("urls"),
                  "num_samples": len(real), "class_names": real.class_names},
        "normalization": {"mean": list(real.mean), "std": list(real.std)},
        "training": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("holdout", "eval_max")},
        "split": {"holdout": holdout, "train_samples": n_train, "heldout_samples": n_held,
                  "test_fingerprint": test.source.get("fingerprint") if test is not None else None},
    }


def _identity(header: dict) -> str:
    keep = {k: header[k] for k in ("network", "normalization", "training")}
    keep["input"] = header["input"]["fingerprint"]
    keep["split"] = {k: header["split"][k] for k in ("holdout", "train_samples")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _refresh_manifest(out: Path, header: dict) -> None:
    def write() -> None:
        _write_json(out / MANIFEST, {"format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__,
                                     "identity": _identity(header), **header,
                                     "snapshots": {"file": "expert-{id:05d}.npy", "dtype": "float32 little-endian",
                                                   "shape": ["epochs + 1", "param_count"]},
                                     "experts": complete_ids(out), "updated": time.time()})
    _manifest_lock(out, write)


def _check_compatible(out: Path, header: dict) -> None:
    mpath = out / MANIFEST
    if not mpath.exists():
        if any(out.iterdir()) and not any(out.glob("expert-*")):
            raise OutputError("buffer folder is not empty and holds no expert buffer; choose another -o", path=str(out))
        return
    try:
        old = json.loads(mpath.read_text())
    except ValueError:
        raise InputDataError("manifest.json is not valid JSON", path=str(mpath)) from None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise OutputError("folder holds a manifest.json that is not an expert buffer; choose another -o",
                          path=str(out))
    if old.get("identity") != _identity(header):
        diff = [k for k in ("network", "normalization", "training") if old.get(k) != header[k]]
        if old.get("input", {}).get("fingerprint") != header["input"]["fingerprint"]:
            diff.append("input fingerprint")
        if old.get("split", {}).get("holdout") != header["split"]["holdout"]:
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
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
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
    _check_compatible(out, header)
    _remove_leftovers(out)
    _refresh_manifest(out, header)
    data = _Data(real, train_idx, held_idx, test, cfg.eval_max, device)
    shape = (cfg.epochs + 1, param_count)
    done, busy, trained = [], [], []
    t0 = time.time()
    for i in range(num_experts):
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
    _refresh_manifest(out, header)
    complete = complete_ids(out)
    return {"status": "ok" if not busy else "incomplete", "buffer": str(out), "experts": len(complete),
            "trained": trained, "skipped_complete": done, "busy": busy, "epochs": cfg.epochs,
            "param_count": param_count, "optimizer": cfg.optimizer, "holdout": holdout,
            "bytes_per_expert": (cfg.epochs + 1) * param_count * 4, "seconds": round(time.time() - t0, 1)}


class _Data:
    """Normalised training tensors and the evaluation sets, on the training device. A `--test`
    set is normalised with the training input's mean/std (the experts' input space)."""

    def __init__(self, real: RealData, train_idx: torch.Tensor, held_idx: torch.Tensor, test: RealData | None,
                 eval_max: int, device: torch.device):
        from ..core import normalize

        self.x, self.y = real.get(train_idx, device), real.labels[train_idx].to(device)
        self.evals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if held_idx.numel():
            idx = held_idx[:eval_max]
            self.evals["heldout"] = (real.get(idx, device), real.labels[idx])
        if test is not None:
            idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:eval_max]
            self.evals["test"] = (normalize(test.images[idx].to(device), real.mean, real.std), test.labels[idx])


def _train_one(out: Path, i: int, data: _Data, cfg: ExpertConfig, header: dict, device, lock: Path,
               progress, log) -> dict:
    from ..nets import build_net
    from ..nets.functional import flat_params

    net_cfg = header["network"]
    seed = expert_seed(cfg.seed, i)
    g = torch.Generator().manual_seed(seed)
    net = build_net(cfg.model, net_cfg["channels"], net_cfg["num_classes"], tuple(net_cfg["im_size"]),
                    generator=g).to(device)
    P = net_cfg["param_count"]
    npy = out / expert_name(i, "npy")
    tmp = temp_path(npy)
    snaps = _open_snapshots(tmp, npy, (cfg.epochs + 1, P))
    snaps[0] = flat_params(net).detach().cpu().numpy()
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr_teacher, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    aug = cfg.dsa_strategy if cfg.dsa else None
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


def gsam_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               batch_size: int, generator: torch.Generator, aug: str | None, rho: float, alpha: float,
               adaptive: bool) -> float:
    """One epoch of GSAM (Zhuang et al., ICLR'22), the optimiser FTD/DATM train experts with.

    Per batch: g = ∇L(w); ε = ρ·T²g/‖Tg‖ with T = |w| (adaptive) or 1; g_p = ∇L(w+ε);
    step along g_p − α·(g − proj_{g_p} g), i.e. descend the perturbed loss while ascending
    the part of the plain gradient orthogonal to it (the surrogate gap). Both passes see the
    same augmented batch. Returns the mean loss at w.
    """
    from ..augment import dsa

    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    total, seen = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        idx = order[start:start + batch_size]
        xb = dsa.augment(x[idx], aug, generator=generator) if aug else x[idx]
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


# ---------------------------------------------------------------------------------------------
# The default buffer of MTT/DATM runs without --experts


def default_buffer_dir(real: RealData, cfg: ExpertConfig, cache_dir: Path) -> Path:
    """spec.cache_dir/experts/<input fingerprint>-<config hash>/ (reused by later runs)."""
    fp = str(real.source.get("fingerprint", "nofp")).split(":")[-1][:24]
    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "experts" / f"{fp}-{h}"
