"""Resumable iteration state for long-running methods.

A checkpoint is a dict of tensors and plain Python values saved with `torch.save` and read
back with `torch.load(weights_only=True)` (no arbitrary unpickling). The folder also holds
`run.json` with the run's identity (method, config, seed, ipc, input fingerprint); a
checkpoint from a different run is never resumed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def run_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpointer:
    """Atomic save/load of a method's loop state in a run's work folder.

    Args:
        work_dir: the run's private folder.
        identity: JSON-able dict identifying the run (a mismatch discards old state).
        every: save period in iterations (0 disables periodic saves).
        resume: when False, existing state is discarded.
    """

    def __init__(self, work_dir: Path, identity: dict, *, every: int = 50, resume: bool = True):
        self.dir = Path(work_dir)
        self.every = int(every)
        self.key = run_key(identity)
        self.path = self.dir / "state.pt"
        self.resumed_from: int | None = None
        meta = self.dir / "run.json"
        stale = True
        if resume and meta.exists():
            try:
                stale = json.loads(meta.read_text()).get("key") != self.key
            except (OSError, json.JSONDecodeError):
                stale = True
        if stale and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"key": self.key, "identity": identity}, default=str, indent=1))

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.resumed_from = int(state.get("iteration", 0))
        return state

    def due(self, iteration: int) -> bool:
        return self.every > 0 and iteration > 0 and iteration % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_name(f"state.pt.tmp-{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def file(self, name: str) -> Path:
        """A path inside the work folder for auxiliary resumable artefacts."""
        return self.dir / name

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
