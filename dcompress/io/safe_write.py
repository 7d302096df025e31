"""Writing one file safely: temp file + rename, with OS errors turned into our exceptions.

Every file dcompress writes outside an `AtomicDir` (checkpoints, teacher cache, expert buffer,
feature cache) goes through `atomic_write`: the bytes go to `<name>.tmp-<pid>` next to the
target, are flushed and fsynced, then `os.replace`d onto the target. A crash at any point
leaves the previous target intact (plus, at worst, a temp file named after the dead pid);
an error removes the temp file and raises

* `ResourceError` (exit 7) for a full disk or quota (ENOSPC, EDQUOT, EFBIG) or ENOMEM,
* `OutputError` (exit 5) for anything else the location refuses (EROFS, EACCES, EPERM, EISDIR...),

naming the target path. Nothing here pickles: `np_save` refuses object arrays and
`torch_save` is meant for tensors and plain values, read back with `weights_only=True`.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ..errors import OutputError, os_error

def temp_path(path: Path) -> Path:
    """`<name>.tmp-<pid>` next to `path`: the pid lets a later run remove leftovers of dead writers."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, fsync: bool = True) -> Path:
    """Calls `write(f)` on a temp file, then renames it onto `path`; returns `path`.

    Raises ResourceError / OutputError (see module doc) after removing the temp file; any other
    exception from `write` propagates, also after removing the temp file.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise os_error(e, path) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), fsync=fsync)


def write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    return write_bytes(path, text.encode(), fsync=fsync)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1, fsync: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n", fsync=fsync)


def torch_save(path: str | Path, obj: Any, *, fsync: bool = True) -> Path:
    """`torch.save(obj)` serialised in memory first, then written like any bytes: torch's own
    writers report a full disk as a bare RuntimeError ("unexpected pos"), not as ENOSPC."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()), fsync=fsync)


class _Chunked:
    """A writer numpy does not recognise as a real file: `np.save` then writes in chunks through
    `.write` (a real file goes through `ndarray.tofile`, whose errors carry no errno)."""

    def __init__(self, f: BinaryIO):
        self.write = f.write


def load_failure(e: BaseException) -> str:
    """Why `torch.load(weights_only=True)` refused a file, in one sentence: torch's own message
    is a page of advice (re-run with weights_only=False, allowlist globals) that a user of a
    checkpoint or teacher file must not follow, so only its diagnosis is kept."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|Check the documentation|$)", text, re.S)
        detail = " ".join(found.group(1).split()) if found else ""
        detail = re.split(r"\. Please use `torch", detail)[0].rstrip(".")
        return ("refused by the weights-only loader: it holds Python objects, or is not a PyTorch file"
                + (f" ({detail})" if detail else ""))
    text = " ".join(text.split())
    return f"{type(e).__name__}: {text if len(text) <= 300 else text[:300].rsplit(' ', 1)[0] + ' ...'}"


def np_save(path: str | Path, arr, *, fsync: bool = True) -> Path:
    """`np.save(arr, allow_pickle=False)` to `path` (no `.npy` appended)."""
    import numpy as np

    return atomic_write(path, lambda f: np.save(_Chunked(f), np.asarray(arr), allow_pickle=False), fsync=fsync)


def ensure_dir(path: str | Path) -> Path:
    """mkdir -p; OutputError when `path` is an existing non-folder or cannot be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError("exists and is not a folder", path=str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, path, "create folder") from None
    return path


def move_aside(path: str | Path, tag: str = "corrupt", dest_dir: str | Path | None = None) -> Path | None:
    """Renames `path` to `<name>.<tag>-<YYYYmmdd-HHMMSS>` in the same folder, or in `dest_dir`
    (a quarantine that outlives the run's work folder), never deleting it, so a person can look
    at it; returns the new path, or None when `path` vanished meanwhile."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(dest_dir) if dest_dir is not None else path.parent
    if dest_dir is not None:
        ensure_dir(folder)
    dest = folder / f"{path.name}.{tag}-{stamp}"
    if dest.exists():
        dest = folder / f"{path.name}.{tag}-{stamp}-{os.getpid()}-{time.time_ns()}"
    try:
        if dest_dir is not None and not path.is_dir():
            shutil.copy2(path, dest)        # across filesystems too; then drop the original
            path.unlink()
        else:
            os.replace(path, dest)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error(e, path, "move aside") from None
    return dest


def pid_alive(pid: int) -> bool:
    """True unless `pid` certainly does not exist on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_dead_temps(folder: str | Path, pattern: str = "*.tmp-*") -> list[Path]:
    """Removes `<name>.tmp-<pid>` files in `folder` whose writer pid is dead; returns them."""
    removed = []
    for p in Path(folder).glob(pattern):
        pid = p.name.rpartition(".tmp-")[2].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)) and p.is_file():
            _unlink_quietly(p)
            removed.append(p)
    return removed


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
