"""`evaluate --protocol fair` and `--models` through the CLI on tiny shards (few epochs)."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from dcompress.cli import app

runner = CliRunner()
FAST = ["--epochs", "2", "--runs", "2", "--model", "convnet_w8", "--test-limit", "12"]
FAIR = ["--protocol", "fair", "--lr-grid", "0.01,0.1", "--val-per-class", "2", "--full-epochs", "1"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sets(shards, tmp_path_factory):
    base = tmp_path_factory.mktemp("fair")
    out = {}
    with pytest.MonkeyPatch.context() as mp:     # the session cache the autouse fixture gives each test
        mp.setenv("DCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        for name, labels in (("hard", ["--labels", "hard"]),
                             ("teacher", ["--labels", "teacher", "--teacher-set", "model=convnet_w8",
                                          "--teacher-set", "epochs=1"])):
            r = run("distill", shards["train"], "--method", "random", "--ipc", "2", "-o", base / name, "--json",
                    *labels)
            assert r.exit_code == 0, r.output
            out[name] = base / name
    return {"base": base, **out}


def fair_json(out, test, *extra):
    r = run("evaluate", out, "--test", test, *FAST, *FAIR, "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_fair_hard_labels_report_and_scores(sets, shards):
    rep = fair_json(sets["hard"], shards["test"])
    assert rep["status"] == "ok" and rep["evaluation"] == "fair"
    f, sc = rep["fair"], rep["scores"]
    assert f["labels"] == "hard" and f["validation"] == {"per_class": 2, "samples": 6}
    assert [(r["labels"], r["aug"]) for r in f["results"]] == [("hard", "none"),
                                                              ("hard", "color_crop_cutout_flip_scale_rotate")]
    for row in f["results"]:
        for side in ("compressed", "random"):
            s = row[side]
            assert s["lr"] in (0.01, 0.1) and s["lr_source"] == "grid" and len(s["runs"]) == 2
            assert [g["lr"] for g in s["val_grid"]] == [0.01, 0.1]
            assert max(g["val"] for g in s["val_grid"]) == next(g["val"] for g in s["val_grid"] if g["lr"] == s["lr"])
    main = f["results"][0]
    assert rep["compressed"]["runs"] == main["compressed"]["runs"] and rep["random"]["runs"] == main["random"]["runs"]
    assert rep["protocol"]["lr_used"] == main["compressed"]["lr"] and rep["random"]["labels"] == "hard labels"
    # the scores are the reported accuracies run by run: HLR = full - set (hard), IOR = set - random
    full = f["full_data"]["accuracy"] * 100
    assert sc["hlr"]["runs"] == pytest.approx([full - a for a in main["compressed"]["runs"]], abs=0.02)
    assert sc["ior"]["runs"] == pytest.approx([a - b for a, b in zip(main["compressed"]["runs"],
                                                                      main["random"]["runs"])], abs=0.02)
    assert 0 <= sc["lrs"]["mean"] <= 100 and 0 <= sc["ars"]["mean"] <= 100 and sc["weights"] == {"lrs": 0.5, "ars": 0.5}
    assert f["full_data"]["samples"] == 30 and f["teacher"] is None


def test_fair_is_deterministic_and_caches_full_data(sets, shards, tmp_path, monkeypatch):
    monkeypatch.setenv("DCOMPRESS_CACHE", str(tmp_path / "cache"))
    a = fair_json(sets["hard"], shards["test"], "--no-ars", "--seed", "3")
    b = fair_json(sets["hard"], shards["test"], "--no-ars", "--seed", "3")
    assert a["fair"]["full_data"]["cached"] is False and b["fair"]["full_data"]["cached"] is True
    assert len(list((tmp_path / "cache" / "full-data").glob("*.json"))) == 1
    for r in (a, b):
        r.pop("seconds"), r["fair"].pop("full_data")
    assert a == b and "ars" not in a["scores"] and len(a["fair"]["results"]) == 1


def test_fair_relabels_random_subsets_with_the_sets_teacher(sets, shards):
    rep = fair_json(sets["teacher"], shards["test"], "--no-ars")
    f = rep["fair"]
    assert f["labels"] == "soft" and [r["labels"] for r in f["results"]] == ["hard", "soft"]
    assert f["teacher"]["same_as_set"] is True and f["teacher"]["source"] == "cache"
    assert rep["random"]["labels"] == "teacher soft labels" and rep["protocol"]["soft_labels"] is True
    # HLR uses the hard-label row, IOR the soft one
    hard, soft = f["results"]
    full = f["full_data"]["accuracy"] * 100
    assert rep["scores"]["hlr"]["runs"] == pytest.approx([full - a for a in hard["compressed"]["runs"]], abs=0.02)
    assert rep["compressed"]["runs"] == soft["compressed"]["runs"]


def test_models_table(sets, shards):
    r = run("evaluate", sets["hard"], "--test", shards["test"], "--epochs", "1", "--runs", "1", "--test-limit", "12",
            "--models", "convnet_w8,lenet", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [m["model"] for m in rep["models"]] == ["convnet_w8", "lenet"]
    assert all(len(m["compressed"]["runs"]) == 1 and m["random"] is not None for m in rep["models"])
    assert rep["protocol"]["model"] == "convnet_w8"                  # top level: the first model
    fair = run("evaluate", sets["hard"], "--test", shards["test"], "--epochs", "1", "--runs", "1", "--test-limit", "12",
               *FAIR, "--no-ars", "--models", "convnet_w8,mlp", "--json")
    assert fair.exit_code == 0, fair.output
    rows = json.loads(fair.stdout)["models"]
    assert [m["model"] for m in rows] == ["convnet_w8", "mlp"] and all("lrs" in m["scores"] for m in rows)
    text = run("evaluate", sets["hard"], "--test", shards["test"], "--epochs", "1", "--runs", "1", "--test-limit",
               "12", "--models", "convnet_w8,lenet", "--no-random")
    assert text.exit_code == 0 and "lenet" in text.stdout and "cross-architecture" in text.stdout


def test_halving_reports_its_rungs_and_trains_the_grids_network_at_the_same_lr(sets, shards):
    """`--lr-search halving` (5 lrs, 3 passes: a rung at 1 pass keeps 2): the report names the
    search and each lr's passes; where it picks the grid's lr every run's accuracy is the
    grid's (run 0: the same network, trained on from the rung). Progress ends at its total."""
    from dcompress.api.evaluate import evaluate

    ticks = []
    kw = dict(train=shards["train"], runs=2, model="convnet_w8", epochs=2, test_limit=12, protocol="fair",
              lr_grid="0.001,0.005,0.01,0.05,0.1", val_per_class=2, full_epochs=1, ars=False, device="cpu")
    grid = evaluate(sets["hard"], shards["test"], **kw)
    halving = evaluate(sets["hard"], shards["test"], lr_search="halving",
                       progress=lambda done, total, what: ticks.append((done, total, what)), **kw)
    assert grid["fair"]["lr_search"] == "grid" and halving["fair"]["lr_search"] == "halving"
    assert halving["fair"]["halving_eta"] == 3
    assert ticks[-1][:2] == (2 * (5 * 1 + 1 * 2 + 3),) * 2 and "network passes" in ticks[-1][2]
    agree = 0
    for g_row, h_row in zip(grid["fair"]["results"], halving["fair"]["results"]):
        for side in ("compressed", "random"):
            g, h = g_row[side], h_row[side]
            assert [r["passes"] for r in g["val_grid"]] == [3] * 5 and g["network_passes"] == 5 * 3 + 3
            assert sorted(r["passes"] for r in h["val_grid"]) == [1, 1, 1, 1, 3] and h["network_passes"] == 10
            assert next(r["passes"] for r in h["val_grid"] if r["lr"] == h["lr"]) == 3
            if h["lr"] == g["lr"]:
                agree += 1
                assert h["runs"] == g["runs"]
                assert next(r for r in h["val_grid"] if r["lr"] == h["lr"]) == \
                    next(r for r in g["val_grid"] if r["lr"] == g["lr"])
    assert agree                                        # on these shards at least one side agrees


@pytest.mark.parametrize("extra,code,needle", [
    (["--models", "convnet_w8,nope"], 2, "unknown network 'nope'"),
    (["--model", "nope"], 2, "unknown network 'nope'"),
    (["--models", "convnet,lenet", "--model", "mlp"], 2, "not both"),
    (["--lr-grid", "0.1"], 2, "only applies to --protocol fair"),
    (["--protocol", "fair", "--no-random"], 2, "drop --no-random"),
    (["--protocol", "fair", "--lr-grid", "0,0.1"], 2, "--lr-grid"),
    (["--protocol", "bogus"], 2, "--protocol must be one of own, fair"),
    (["--lr-search", "halving"], 2, "only applies to --protocol fair"),
    (["--protocol", "fair", "--lr-search", "bisect"], 2, "--lr-search must be one of grid, halving"),
])
def test_bad_options_exit_2(sets, shards, extra, code, needle):
    r = run("evaluate", sets["hard"], "--test", shards["test"], "--json", *extra)
    rep = json.loads(r.stdout)
    assert r.exit_code == code and rep["exit_code"] == code and needle in rep["error"], r.output


def test_fair_without_training_input_exits_4(shards, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(shards["train"], train)
    out = tmp_path / "set"
    assert run("distill", train, "--method", "random", "--ipc", "1", "--labels", "hard", "-o", out).exit_code == 0
    shutil.rmtree(train)
    r = run("evaluate", out, "--test", shards["test"], *FAIR, "--json")
    rep = json.loads(r.stdout)
    assert r.exit_code == 4 and "--protocol fair needs the training input" in rep["error"]
    assert "pass --train URLS" in rep["error"] and "dcompress.source.urls" in rep["error"]
    ok = run("evaluate", out, "--test", shards["test"], *FAST, *FAIR, "--no-ars", "--train", shards["train"], "--json")
    assert ok.exit_code == 0, ok.output


def test_fair_with_a_users_teacher_needs_it_again(sets, shards, tmp_path):
    info = json.loads((sets["teacher"] / "manifest.json").read_text())["dcompress"]["labels"]["teacher"]
    pt = tmp_path / "mine.pt"
    shutil.copy(info["path"], pt)
    shutil.copy(info["path"].replace(".pt", ".json"), tmp_path / "mine.json")
    out = tmp_path / "user-set"
    r = run("distill", shards["train"], "--method", "random", "--ipc", "2", "--labels", "teacher", "--teacher", pt,
            "-o", out)
    assert r.exit_code == 0, r.output
    bad = run("evaluate", out, "--test", shards["test"], *FAST, *FAIR, "--no-ars", "--json")
    assert bad.exit_code == 4 and "pass it again with --teacher PATH" in json.loads(bad.stdout)["error"]
    rep = fair_json(out, shards["test"], "--no-ars", "--teacher", pt)
    assert rep["fair"]["teacher"]["source"] == "user" and rep["fair"]["teacher"]["same_as_set"] is True
