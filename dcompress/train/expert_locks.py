"""Locks on an expert buffer: one per expert slot (heartbeat, stale owners broken) and a short
one around the buffer's manifest, so several processes can fill one buffer."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Literal

from ..errors import UsageError, os_error
from ..faults import crash_point
from ..io.safe_write import pid_alive
from .buffer import expert_name


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
