"""End to end through the CLI on tiny shards: shard -> distill -> verify/inspect/load/evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from typer.testing import CliRunner

from dcompress.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def distill(shards, out: Path, *extra: str):
    return run("distill", shards["train"], "--method", "random", "--ipc", "2", "-o", out, "--json", *extra)


def data_shards(out: Path) -> list[str]:
    """An output's shards in order (a small output has several: io.output.output_shard_size)."""
    return sorted(map(str, out.glob("data-*.tar")))


def test_shard_writes_six_digit_shards_and_wids_manifest(shards):
    m = json.loads((shards["train"] / "manifest.json").read_text())
    assert m["__kind__"] == "wids-shard-index-v1" and m["wids_version"] == 1
    assert [r["url"] for r in m["shardlist"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar"]
    assert sum(r["nsamples"] for r in m["shardlist"]) == 36
    assert m["dcompress"]["urls"] == "train-{000000..000003}.tar"


def test_random_distill_outputs_load_in_all_readers(shards, tmp_path):
    out = tmp_path / "D"
    r = distill(shards, out, "--labels", "hard")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["samples"] == 6 and report["labels"] == "hard"
    names = sorted(p.name for p in out.iterdir() if p.name != "metrics.jsonl")
    assert names == ["README.md", "_info.json", *(f"data-{k:06d}.tar" for k in range(6)), "grid.png",
                     "manifest.json", "provenance.jsonl"]   # 6 samples: a shard each (io.output.output_shard_size)
    # wids index reader
    import wids

    ds = wids.ShardListDataset(str(out / "manifest.json"))
    assert len(ds) == 6
    sample = ds[0]
    assert {".png", ".cls"} <= set(sample) and not {".logits.npy", ".json"} & set(sample)   # hard: .cls alone
    # plain webdataset
    items = list(wds.WebDataset(data_shards(out), shardshuffle=False).decode("l8").to_tuple("png", "cls"))
    assert len(items) == 6 and items[0][0].shape == (28, 28) and items[0][1] == 0
    # drop-in loader
    from dcompress import load

    d = load(out)
    x, soft, y = d[0]
    assert x.shape == (1, 28, 28) and soft.shape == (3,) and int(y) == int(soft.argmax())
    assert d.lr is None and len(d.classes) == 3


def test_same_seed_gives_byte_identical_shards_and_other_seed_differs(shards, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert distill(shards, a, "--labels", "hard").exit_code == 0
    assert distill(shards, b, "--labels", "hard").exit_code == 0
    assert distill(shards, c, "--labels", "hard", "--seed", "1").exit_code == 0
    same, other = ([Path(p).read_bytes() for p in data_shards(d)] for d in (b, c))
    assert [Path(p).read_bytes() for p in data_shards(a)] == same != other


def test_verify_passes_then_catches_a_flipped_byte(shards, tmp_path):
    out = tmp_path / "D"
    assert distill(shards, out, "--labels", "hard").exit_code == 0
    ok = run("verify", out, "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["samples"] == 6
    tar = out / "data-000000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    bad = run("verify", out, "--json")
    assert bad.exit_code == 6
    rep = json.loads(bad.stdout)
    assert rep["status"] == "error" and "md5" in rep["error"] and "data-000000.tar" in rep["error"]


def test_dry_run_writes_nothing(shards, tmp_path):
    out = tmp_path / "D"
    r = distill(shards, out, "--dry-run")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["plan"]
    assert plan["classes"] == 3 and plan["output_samples"] == 6 and plan["image_shape"] == [1, 28, 28]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_dry_run_estimates_label_bytes_with_topk(shards, tmp_path):
    """The plan splits its estimate into images and soft labels; `--label-topk` is counted (here 3
    classes: 6 bytes of float16 logits or one 4-byte record, each one 512-byte tar block after
    its header block) and checked against the class count before anything is written."""
    full = json.loads(distill(shards, tmp_path / "D", "--dry-run").stdout)["plan"]
    top = json.loads(distill(shards, tmp_path / "D", "--dry-run", "--label-topk", "1").stdout)["plan"]
    assert full["estimated_bytes"]["labels"] == top["estimated_bytes"]["labels"] == 6 * 1024
    assert full["estimated_bytes"]["images"] == top["estimated_bytes"]["images"] > 0
    assert top["label_topk"] == 1 and "label_topk" not in full
    bad = distill(shards, tmp_path / "D", "--dry-run", "--label-topk", "4")
    assert bad.exit_code == 2 and "exceeds the input's 3 classes" in bad.stdout
    assert not (tmp_path / "D").exists()


def test_teacher_labels_are_default_for_selection_and_cached(shards, tmp_path):
    r = distill(shards, tmp_path / "D")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "D" / "manifest.json").read_text())["dcompress"]
    assert m["labels"]["kind"] == "teacher" and m["labels"]["teacher"]["source"] in ("trained", "cache")
    assert m["eval_protocol"]["soft_labels"] is True
    assert distill(shards, tmp_path / "E").exit_code == 0
    m2 = json.loads((tmp_path / "E" / "manifest.json").read_text())["dcompress"]
    assert m2["labels"]["teacher"]["source"] == "cache"


@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_feature_selection_methods_pick_distinct_real_samples(shards, tmp_path, method):
    out = tmp_path / method
    r = run("distill", shards["train"], "--method", method, "--ipc", "3", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    from dcompress import load

    d = load(out)
    keys = [json.loads(s)["source_key"] for s in _jsons(out)]
    assert len(set(keys)) == 9 and torch.bincount(d.labels).tolist() == [3, 3, 3]


def _jsons(out: Path):
    """Each sample's provenance: a line of provenance.jsonl (no per-sample .json unless --sample-json)."""
    yield from (out / "provenance.jsonl").read_text().splitlines()


def test_evaluate_reports_compressed_and_random(shards, tmp_path):
    out = tmp_path / "D"
    assert distill(shards, out, "--labels", "hard").exit_code == 0
    r = run("evaluate", out, "--test", shards["test"], "--runs", "2", "--epochs", "4", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert len(rep["compressed"]["runs"]) == 2 and len(rep["random"]["runs"]) == 2
    assert 0 <= rep["compressed"]["mean"] <= 100 and rep["test_samples"] == 18
    assert rep["protocol"]["epochs"] == 4


def test_inspect_writes_grid(shards, tmp_path):
    out = tmp_path / "D"
    assert distill(shards, out, "--labels", "hard").exit_code == 0
    r = run("inspect", out, "--json", "--grid", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(r.stdout)["classes"] == {"0": 2, "1": 2, "2": 2}


def test_methods_lists_registered_methods():
    r = run("methods", "--json")
    assert r.exit_code == 0
    from dcompress.registry import list_methods

    rep = json.loads(r.stdout)
    assert rep["status"] == "ok" and {m["name"] for m in rep["methods"]} == {c.info.name for c in list_methods()}
    import dataclasses

    fields = {c.info.name: [f.name for f in dataclasses.fields(c.Config)] for c in list_methods()}
    assert all(list(m["options"]) == fields[m["name"]] for m in rep["methods"])


def test_rerun_replaces_previous_output_only_with_overwrite(shards, tmp_path):
    out = tmp_path / "D"
    assert distill(shards, out, "--labels", "hard").exit_code == 0
    before = (out / "manifest.json").read_bytes()
    same = distill(shards, out, "--labels", "hard")
    assert same.exit_code == 0 and json.loads(same.stdout)["up_to_date"] is True
    refused = distill(shards, out, "--labels", "hard", "--seed", "3")
    rep = json.loads(refused.stdout)
    assert refused.exit_code == 2 and "--overwrite" in rep["error"] and "random output (IPC 2" in rep["error"]
    assert (out / "manifest.json").read_bytes() == before
    assert distill(shards, out, "--labels", "hard", "--seed", "3", "--overwrite").exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["dcompress"]["method"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]


def test_experts_flags_beat_the_yaml_file(shards, tmp_path):
    import json

    from typer.testing import CliRunner

    from dcompress.cli import app

    f = tmp_path / "e.yaml"
    f.write_text("epochs: 5\nmodel: convnet_w8\nbatch_train: 64\n")
    r = CliRunner().invoke(app, ["experts", str(shards["train"]), "-o", str(tmp_path / "buf"), "--num-experts", "1",
                                 "--config", str(f), "--epochs", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epochs"] == 1
