"""DC, DSA and DM end to end through the CLI on tiny shards: distill -> manifest/.npy -> evaluate."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dcompress.cli import app

runner = CliRunner()


TINY = ["--set", "model=convnet_w16", "--set", "batch_real=8"]
PER_METHOD = {
    "dm": (["--set", "iterations=3"], {"name": "dm", "epochs": 1000, "aug": "color_crop_cutout_flip_scale_rotate"}),
    "dc": (["--set", "iterations=1", "--set", "outer_loop=2", "--set", "inner_loop=1", "--set", "batch_train=4"],
           {"name": "dc", "epochs": 300, "aug": None}),
    "dsa": (["--set", "iterations=1", "--set", "outer_loop=2", "--set", "inner_loop=1", "--set", "batch_train=4"],
            {"name": "dsa", "epochs": 1000, "aug": "color_crop_cutout_flip_scale_rotate"}),
}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def tar_members(folder: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted(folder.glob("data-*.tar")):
        with tarfile.open(shard) as t:
            for m in t.getmembers():
                out[m.name] = t.extractfile(m).read()
    return out


@pytest.mark.parametrize("method", sorted(PER_METHOD))
def test_distill_then_evaluate(method, shards, tmp_path):
    sets, protocol = PER_METHOD[method]
    out = tmp_path / method
    r = run("distill", shards["train"], "--method", method, "--ipc", "2", *TINY, *sets, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["status"] == "ok" and report["samples"] == 6 and report["labels"] == "hard"

    block = json.loads((out / "manifest.json").read_text())["dcompress"]
    assert {k: block["eval_protocol"][k] for k in protocol} == protocol
    assert block["eval_protocol"]["model"] == "convnet_w16" and block["exact_tensor"] == "npy"
    assert block["method"]["config"]["model"] == "convnet_w16"

    members = tar_members(out)
    exact = sorted(n for n in members if n.endswith(".npy") and not n.endswith(".logits.npy"))
    assert len(exact) == 6
    arr = np.load(io.BytesIO(members[exact[0]]))
    assert arr.dtype == np.float32 and arr.shape == (1, 28, 28) and np.isfinite(arr).all()
    assert not [n for n in members if n.endswith(".json")]      # provenance: provenance.jsonl, not per sample
    meta = json.loads((out / "provenance.jsonl").read_text().splitlines()[0])
    assert meta["key"] == exact[0].split("/")[-1].split(".")[0] and meta["slot"] == 0 and "init_source_key" in meta

    r = run("evaluate", out, "--test", shards["test"], "--runs", "1", "--epochs", "2", "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["protocol"]["name"] == protocol["name"] and 0 <= ev["compressed"]["mean"] <= 100


def test_unknown_config_key_and_bad_strategy_exit_2(shards, tmp_path):
    r = run("distill", shards["train"], "--method", "dm", "--ipc", "1", "--set", "iters=3", "-o", tmp_path / "a", "--json")
    assert r.exit_code == 2 and "unknown config key 'iters'" in r.stdout
    r = run("distill", shards["train"], "--method", "dsa", "--ipc", "1", "--set", "dsa_strategy=color_warp",
            "-o", tmp_path / "b", "--json")
    assert r.exit_code == 2 and "dsa_strategy" in r.stdout


def test_non_finite_loss_exits_1(shards, tmp_path):
    r = run("distill", shards["train"], "--method", "dm", "--ipc", "1", *TINY, "--set", "iterations=3",
            "--set", "lr_img=inf", "-o", tmp_path / "inf", "--json")
    assert r.exit_code == 2 and "'lr_img' must be finite" in r.stdout
    r = run("distill", shards["train"], "--method", "dm", "--ipc", "1", *TINY, "--set", "iterations=3",
            "--set", "lr_img=1e30", "-o", tmp_path / "nan", "--json")
    assert r.exit_code == 1, r.output
    err = json.loads(r.stdout)
    assert err["error_type"] == "NonFiniteLoss" and "iteration" in err["error"]
