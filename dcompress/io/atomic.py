"""Atomic output folders: build in a hidden sibling, then swap in with renames.

A killed run leaves either the previous complete output or none: the target folder is only
ever replaced by a fully written one (manifest last), never edited in place.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import OutputError
from ..faults import crash_point
from .manifest import MANIFEST


def is_dcompress_output(path: Path) -> bool:
    m = path / MANIFEST
    if not m.is_file():
        return False
    try:
        return "dcompress" in json.loads(m.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def check_target(target: Path) -> None:
    """OutputError (exit 5) when `target` exists and holds something that is not ours."""
    if target.exists() and not target.is_dir():
        raise OutputError("output path exists and is not a folder", path=str(target))
    if target.is_dir() and any(target.iterdir()) and not is_dcompress_output(target):
        raise OutputError("output folder is not empty and is not a dcompress output; "
                          "choose another -o or empty it", path=str(target))


def work_dir_for(target: Path) -> Path:
    """Private scratch folder (checkpoints) of the run writing `target`."""
    return target.parent / f".{target.name}.dcompress-work"


class AtomicDir:
    """Context manager: `with AtomicDir(target) as tmp: write into tmp` then swap.

    On an exception the temporary folder is removed and `target` is untouched.
    """

    def __init__(self, target: str | Path):
        self.target = Path(target).absolute()
        check_target(self.target)
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            os.replace(self.target, old)
        crash_point("atomic.swap")
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
