"""Through the CLI on tiny shards: experts -> distill (mtt, datm, dd) -> evaluate with the learned lr."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcompress.cli import app

runner = CliRunner()
TINY = ["--ipc", "1", "--set", "iterations=2", "--set", "syn_steps=3", "--set", "expert_epochs=1",
        "--set", "max_start_epoch=2", "--set", "model=convnet_w16", "--json"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def report_of(r) -> dict:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["dcompress"]


@pytest.fixture(scope="module")
def buf(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("experts") / "BUF"
    rep = report_of(run("experts", shards["train"], "-o", out, "--num-experts", "2", "--epochs", "3",
                        "--set", "model=convnet_w16", "--test", shards["test"], "--json"))
    assert rep["status"] == "ok" and rep["experts"] == 2 and rep["trained"] == [0, 1] and rep["holdout"] == 0.0
    return out


def test_experts_command_writes_a_buffer_and_resumes(buf, shards):
    m = json.loads((buf / "manifest.json").read_text())
    assert m["experts"] == [0, 1] and m["network"]["name"] == "convnet_w16" and m["training"]["epochs"] == 3
    side = json.loads((buf / "expert-00001.json").read_text())
    assert len(side["accuracy"]["test"]) == 3
    rep = report_of(run("experts", shards["train"], "-o", buf, "--num-experts", "2", "--epochs", "3",
                        "--set", "model=convnet_w16", "--test", shards["test"], "--json"))
    assert rep["trained"] == [] and rep["skipped_complete"] == [0, 1]
    bad = run("experts", shards["train"], "-o", buf, "--num-experts", "2", "--epochs", "4",
              "--set", "model=convnet_w16", "--json")
    assert bad.exit_code == 2 and json.loads(bad.stdout)["error_type"] == "UsageError"


def test_mtt_distill_and_evaluate_with_the_learned_lr(buf, shards, tmp_path):
    out = tmp_path / "MTT"
    rep = report_of(run("distill", shards["train"], "--method", "mtt", "--experts", buf, "-o", out, *TINY))
    assert rep["samples"] == 3 and rep["labels"] == "hard" and rep["learned_lr"] > 0
    m = manifest(out)
    assert m["learned"]["lr"] == rep["learned_lr"] and m["eval_protocol"]["use_learned_lr"]
    assert m["eval_protocol"]["aug"] and m["info"]["experts"]["path"] == str(buf.absolute())
    assert m["info"]["memory"] in ("full", "constant")
    ev = report_of(run("evaluate", out, "--test", shards["test"], "--runs", "1", "--epochs", "2", "--no-random",
                       "--json"))
    assert ev["protocol"]["lr_used"] == pytest.approx(rep["learned_lr"]) and ev["protocol"]["model"] == "convnet_w16"


def test_datm_learns_soft_labels(buf, shards, tmp_path):
    out = tmp_path / "DATM"
    rep = report_of(run("distill", shards["train"], "--method", "datm", "--experts", buf, "-o", out,
                        "--set", "threshold=100", *TINY))
    assert rep["labels"] == "learned" and rep["learned_lr"] > 0
    m = manifest(out)
    assert m["labels"]["kind"] == "learned" and m["eval_protocol"]["soft_labels"]
    assert m["eval_protocol"]["batch_size"] == 128 and m["info"]["skipped_updates"] == 0
    from dcompress import load

    ds = load(out)
    assert ds.logits.shape == (3, 3) and not ((ds.logits == 0) | (ds.logits == 1)).all()  # not one-hot


def test_dd_distill_and_replay(shards, tmp_path):
    out = tmp_path / "DD"
    rep = report_of(run("distill", shards["train"], "--method", "dd", "-o", out, "--ipc", "1",
                        "--set", "iterations=2", "--set", "distill_steps=1", "--set", "distill_epochs=2",
                        "--set", "batch_real=16", "--json"))
    m = manifest(out)
    assert len(m["learned"]["lrs"]) == 2 and all(v > 0 for v in m["learned"]["lrs"]) and rep["learned_lr"] is None
    assert m["eval_protocol"]["name"] == "dd" and m["info"]["replay"]["distill_steps"] == 1
    from dcompress.api import load_real
    from dcompress.train.replay import replay_accuracy

    acc = replay_accuracy(out, load_real(str(shards["test"])), runs=2)
    assert len(acc["runs"]) == 2 and 0 <= acc["mean"] <= 100


def test_missing_buffer_is_an_input_error(shards, tmp_path):
    r = run("distill", shards["train"], "--method", "mtt", "--experts", tmp_path / "nope", "-o", tmp_path / "O", *TINY)
    assert r.exit_code == 4 and "expert buffer" in json.loads(r.stdout)["error"]
