"""Commands that need no network training start without torch: the real `dcompress` entry point
in a subprocess, its imports listed by Python itself (PYTHONPROFILEIMPORTTIME), must hold no
torch or torchvision module (importing torch costs ~2 s and ~600 MB). Timings are printed by
tools/bench_cli.py, not asserted here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision")


def entry_point() -> list[str]:
    """The installed `dcompress` console script of this interpreter (else `python -m dcompress`)."""
    script = Path(sys.executable).with_name("dcompress")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dcompress"]


def imported(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Runs `dcompress ARGS`; returns the process and the names of every module it imported."""
    proc = subprocess.run(entry_point() + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {}), "PYTHONPROFILEIMPORTTIME": "1"})
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "dcompress.cli" in names, proc.stderr[-2000:]       # the import list was read
    return proc, names


def heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


@pytest.fixture(scope="module")
def out(real, tmp_path_factory) -> Path:
    from dcompress import api

    path = tmp_path_factory.mktemp("startup") / "set"
    api.distill(None, "random", out=path, ipc=2, labels="hard", device="cpu", real=real)
    return path


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["methods"], ["methods", "--json"], ["methods", "dm"],
                                  ["methods", "dm", "--json"], ["distill", "--help"],
                                  ["cache", "ls"], ["cache", "ls", "--json"]])
def test_light_commands_import_no_torch(args, tmp_path):
    proc, names = imported(*args, env={"DCOMPRESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert heavy(names) == [], f"dcompress {' '.join(args)} imported {heavy(names)[:5]}"


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_reading_an_output_imports_no_torch(command, out):
    proc, names = imported(command, str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert heavy(names) == [], f"dcompress {command} imported {heavy(names)[:5]}"


def test_a_failing_light_command_imports_no_torch(tmp_path):
    """The error path (exit-code mapping, the JSON error report) is torch-free too."""
    proc, names = imported("verify", str(tmp_path / "missing"), "--json")
    assert proc.returncode != 0 and '"status": "error"' in proc.stdout
    assert heavy(names) == []


def test_the_import_list_sees_torch_where_it_is_used(shards, tmp_path):
    """The control: a command that reads shards does load torch, and the check above sees it."""
    proc, names = imported("distill", str(shards["train"]), "--method", "random", "--ipc", "1", "--dry-run", "-o",
                           str(tmp_path / "o"),
                           env={"DCOMPRESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch" in names
