"""Every command's --json stdout is exactly one JSON object with a `status`, on success and on
failure (docs/json.md)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dcompress.cli import app

runner = CliRunner()
ERROR_KEYS = {"status", "error", "error_type", "exit_code"}


def one_object(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, stdout
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


@pytest.fixture(scope="module")
def made(shards, idx_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("json")
    out = base / "out"
    r = runner.invoke(app, ["distill", str(shards["train"]), "--method", "random", "--ipc", "2", "--labels", "hard",
                            "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return {"base": base, "out": out, "idx": idx_dir, **shards}


SUCCESS = {
    "shard": lambda m: ["shard", m["idx"], m["base"] / "s", "--format", "idx"],
    "distill": lambda m: ["distill", m["train"], "--method", "random", "--ipc", "1", "--labels", "hard",
                          "-o", m["base"] / "d"],
    "distill-dry-run": lambda m: ["distill", m["train"], "--method", "dm", "--ipc", "1", "-o", m["base"] / "x",
                                  "--dry-run"],
    "experts": lambda m: ["experts", m["train"], "-o", m["base"] / "e", "--num-experts", "1", "--epochs", "1",
                          "--set", "model=convnet_w8", "--set", "batch_train=64"],
    "methods": lambda m: ["methods"],
    "evaluate": lambda m: ["evaluate", m["out"], "--test", m["test"], "--runs", "1", "--epochs", "1",
                           "--model", "convnet_w8"],
    "inspect": lambda m: ["inspect", m["out"]],
    "verify": lambda m: ["verify", m["out"]],
    "teacher": lambda m: ["teacher", m["train"], "-o", m["base"] / "t.pt", "--epochs", "1"],
}
FAILURE = {
    "shard": (lambda m: ["shard", m["base"] / "nope", m["base"] / "s2"], 4),
    "distill": (lambda m: ["distill", m["train"], "--method", "nope", "--ipc", "1", "-o", m["base"] / "d2"], 2),
    "distill-click": (lambda m: ["distill", m["train"], "-o", m["base"] / "d3"], 2),
    "experts": (lambda m: ["experts", m["train"], "-o", m["base"] / "e2", "--num-experts", "0"], 2),
    "methods": (lambda m: ["methods", "--bogus"], 2),
    "evaluate": (lambda m: ["evaluate", m["base"] / "nope", "--test", m["test"]], 4),
    "inspect": (lambda m: ["inspect", m["base"] / "nope"], 4),
    "verify": (lambda m: ["verify", m["base"] / "nope"], 4),
    "unknown-command": (lambda m: ["frobnicate"], 2),
    "teacher": (lambda m: ["teacher", m["train"], "-o", m["base"] / "t.txt"], 2),
}


@pytest.mark.parametrize("name", SUCCESS)
def test_success_is_one_object_with_status_ok(made, name):
    r = runner.invoke(app, [*map(str, SUCCESS[name](made)), "--json"])
    assert r.exit_code == 0, r.output
    rep = one_object(r.stdout)
    assert rep["status"] == ("dry-run" if name == "distill-dry-run" else "ok")


@pytest.mark.parametrize("name", FAILURE)
def test_failure_is_one_object_with_the_exit_code(made, name):
    argv, code = FAILURE[name]
    r = runner.invoke(app, [*map(str, argv(made)), "--json"])
    rep = one_object(r.stdout)
    assert r.exit_code == code and set(rep) >= ERROR_KEYS and rep["status"] == "error" and rep["exit_code"] == code
