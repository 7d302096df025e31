"""Resumable iteration state for long-running methods.

A checkpoint is a dict of tensors and plain Python values saved with `torch.save` and read
back with `torch.load(weights_only=True)` (no arbitrary unpickling). The folder also holds
`run.json` with the run's identity (method, config, seed, ipc, input fingerprint); a
checkpoint from a different run is never resumed.

Damage is survivable: a `state.pt` that is truncated, garbage, or holds anything
`weights_only` refuses, and a `run.json` that is not JSON, are moved aside as
`<name>.corrupt-<timestamp>` with a warning, and the run starts fresh. Writes are atomic
(`io.safe_write`): a full disk is a ResourceError (exit 7), an unwritable folder an
OutputError (exit 5), and the previous good `state.pt` is never damaged.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import os_error
from .faults import crash_point
from .io.safe_write import ensure_dir, load_failure, move_aside, remove_dead_temps, torch_save, write_json

STATE = "state.pt"
RUN = "run.json"


def run_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def warn_via(log: Callable[[dict], None] | None) -> Callable[[str, Path], None]:
    """`warn(message, path)`: a `{"event": "warning"}` log record when `log` is given (the route
    the methods use), else a Python RuntimeWarning (printed on stderr by default)."""
    def warn(message: str, path: Path) -> None:
        if log is not None:
            log({"event": "warning", "message": f"{path}: {message}", "path": str(path)})
        else:
            warnings.warn(f"{path}: {message}", RuntimeWarning, stacklevel=3)
    return warn


def _check_like(state: dict, like: dict, where: str = "") -> None:
    """ValueError when a tensor of `like` is missing from `state` or differs in shape/dtype."""
    for k, v in like.items():
        name = f"{where}{k}"
        if isinstance(v, torch.Tensor):
            got = state.get(k)
            if not isinstance(got, torch.Tensor) or got.shape != v.shape or got.dtype != v.dtype:
                found = f"{got.dtype} {list(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
                raise ValueError(f"{name}: expected {v.dtype} {list(v.shape)}, found {found}")
        elif isinstance(v, dict):
            if not isinstance(state.get(k), dict):
                raise ValueError(f"{name}: expected a dict")
            _check_like(state[k], v, f"{name}.")


class Checkpointer:
    """Atomic save/load of a method's loop state in a run's work folder.

    Args:
        work_dir: the run's private folder.
        identity: JSON-able dict identifying the run (a mismatch discards old state).
        every: save period in iterations (0 disables periodic saves).
        resume: when False, existing state is discarded.
        log: receives `{"event": "warning", ...}` when damaged state is moved aside
            (default: Python warnings).
        quarantine: folder that receives damaged state files (default: the work folder, which
            is removed when the run completes; the API passes `<cache>/quarantine`).
        readonly: a torchrun rank other than 0: reads the state rank 0 keeps (after rank 0 has
            validated it), never writes, discards or moves anything.
    """

    def __init__(self, work_dir: Path, identity: dict, *, every: int = 50, resume: bool = True,
                 log: Callable[[dict], None] | None = None, quarantine: Path | None = None,
                 readonly: bool = False):
        self.dir = Path(work_dir)
        self.readonly = readonly
        self.quarantine = quarantine
        self.every = int(every)
        self.key = run_key(identity)
        self.path = self.dir / STATE
        self.resumed_from: int | None = None
        self.saved_at: int | None = None           # the iteration of the last state saved by this process
        self.warn = warn_via(log)
        meta = self.dir / RUN
        if readonly:
            return
        if self.dir.is_dir() and not (resume and self._same_run(meta)):
            self._discard()
        ensure_dir(self.dir)
        remove_dead_temps(self.dir)
        write_json(meta, {"key": self.key, "identity": identity})

    def _same_run(self, meta: Path) -> bool:
        """Whether `run.json` names this run; a damaged one is moved aside (with its state)."""
        try:
            text = meta.read_text()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise os_error(e, meta, "read") from None
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
                raise ValueError("no run key")
        except ValueError as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
            moved = move_aside(meta, dest_dir=self.quarantine)
            self.warn(f"unreadable checkpoint identity ({e}); moved to {moved or '?'}, "
                      "starting fresh", meta)
            return False
        return obj["key"] == self.key

    def _discard(self) -> None:
        """Removes the state of another (or a restarted) run; keeps `*.corrupt-*` files for inspection."""
        for p in self.dir.iterdir():
            if ".corrupt-" in p.name:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def load(self, like: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The last saved state, or None (nothing saved, or the file was damaged and moved aside).

        Args:
            like: the method's fresh state; every tensor in it must be present in the saved
                state with the same shape and dtype, else the checkpoint is unusable.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            data = b""                       # unusable: moved aside below
        except OSError as e:
            raise os_error(e, self.path, "read checkpoint") from None
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"holds a {type(state).__name__}, not a dict")
            iteration = int(state["iteration"])
            _check_like(state, like or {})
        except Exception as e:  # noqa: BLE001 - truncated zip, refused pickle, wrong content: all mean unusable
            if self.readonly:
                return None
            moved = move_aside(self.path, dest_dir=self.quarantine)
            reason = load_failure(e)
            self.warn(f"unusable checkpoint ({reason}); moved to {moved or '?'}, starting fresh", self.path)
            return None
        self.resumed_from = iteration
        return state

    def due(self, iteration: int) -> bool:
        return self.every > 0 and iteration > 0 and iteration % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        """Atomically replaces `state.pt` (ResourceError on a full disk; the old file stays)."""
        if self.readonly:
            return
        torch_save(self.path, state)
        self.saved_at = state.get("iteration")
        crash_point("ckpt.saved")

    def holds_state(self) -> bool:
        """Whether a checkpoint a rerun can resume from is on disk."""
        return self.path.is_file()

    def file(self, name: str) -> Path:
        """A path inside the work folder for auxiliary resumable artefacts."""
        return self.dir / name

    def clear(self) -> None:
        if self.readonly:
            return
        shutil.rmtree(self.dir, ignore_errors=True)
