"""The method catalog (read by `dcompress methods` without torch) matches the registry."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dcompress.registry import build_catalog, catalog

ROOT = Path(__file__).resolve().parents[2]


def test_catalog_file_matches_the_registered_methods():
    assert catalog() == build_catalog(), "stale catalog: run `python tools/gen_method_catalog.py`"


def test_methods_command_imports_no_torch():
    code = ("import sys; from typer.testing import CliRunner; from dcompress.cli import app; "
            "r = CliRunner().invoke(app, ['methods', '--json']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
