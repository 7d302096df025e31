"""Fault-injection points: a test hook for "kill -9 at the worst moment", inert in normal use.

`crash_point("name")` marks a place where a crash must leave nothing half-written. When the
environment variable `DCOMPRESS_CRASH_AT` is `name` (die at the first hit) or `name:N` (die at
the N-th hit, counted from 1, per process), the process sends itself SIGKILL: no `finally`,
no `atexit`, no flush, like a power cut or the OOM killer. Unset (the normal case) a call is
one string comparison: the variable is read once, at the first call.

    DCOMPRESS_CRASH_AT=ckpt.saved:2 dcompress distill ... --ckpt-every 2   # dies after the 2nd save

The points (where they sit):

| name              | where                                                                         |
|-------------------|-------------------------------------------------------------------------------|
| `iter`            | a synthesis iteration, after the update and before its checkpoint (methods/*) |
| `ckpt.saved`      | `Checkpointer.save`, after `state.pt` was renamed into place                  |
| `output.sample`   | `io/output.iter_samples`, before each sample is handed to the shard writer    |
| `output.manifest` | `io/output.finish_output`, after the shards, before `manifest.json`           |
| `distill.written` | `api.distill`, after the output was swapped in, before the work folder is removed |
| `atomic.swap`     | `io/atomic.AtomicDir`, between moving the old output aside and the new in     |
| `teacher.save`    | teacher cache: after the `.json` sidecar, before the `.pt` is renamed in      |
| `teacher.features`| teacher feature cache: after the forward passes, before the `.npy` is written |
| `experts.claimed` | `train_experts`, right after an expert's lock was taken                       |
| `experts.epoch`   | `train_experts`, after each epoch's snapshot was written to the temp `.npy`   |
| `experts.npy`     | after an expert's `.npy` was renamed into place, before its sidecar           |
| `experts.manifest`| inside the buffer's `manifest.lock`, before `manifest.json` is rewritten      |
| `frontier.point`  | `api.frontier`, after a point was recorded (frontier.json; torchrun rank r > 0: its rank file) |

Under torchrun, `DCOMPRESS_CRASH_RANK=r` limits the crash to rank r, and a worker that torchrun
restarted (`--max-restarts`, TORCHELASTIC_RESTART_COUNT > 0) never crashes again, so the
restarted job can show that it finishes with the same bytes (tests/integration/test_distributed.py).

Tests: tests/integration/test_faults.py runs the CLI with each point and checks that a rerun
gives byte-identical results.
"""
from __future__ import annotations

import os
import signal

ENV = "DCOMPRESS_CRASH_AT"
RANK_ENV = "DCOMPRESS_CRASH_RANK"

_target: tuple[str, int] | None = None
_read = False
_hits: dict[str, int] = {}


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, n = value.partition(":")
    try:
        return name, max(1, int(n)) if n else 1
    except ValueError:
        return name, 1


def crash_point(name: str) -> None:
    """SIGKILLs this process when `DCOMPRESS_CRASH_AT` selects this hit of point `name`."""
    global _target, _read
    if not _read:
        _target, _read = _parse(os.environ.get(ENV)), True
        if os.environ.get(RANK_ENV, os.environ.get("RANK", "0")) != os.environ.get("RANK", "0") \
                or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            _target = None
    if _target is None or _target[0] != name:
        return
    _hits[name] = n = _hits.get(name, 0) + 1
    if n == _target[1]:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def reset() -> None:
    """Forgets the parsed variable and the hit counts (for a process that changes its environment)."""
    global _target, _read
    _target, _read = None, False
    _hits.clear()
