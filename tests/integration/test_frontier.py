"""`dcompress frontier` on the tiny shards: the four files, the random side trained once per
(budget, labels) and shared, resume after an interrupt, refusals, a failed point, gates."""
from __future__ import annotations

import csv
import importlib
import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from dcompress.cli import app
from tests.conftest import frontier_without_times

runner = CliRunner()
frontier_mod = importlib.import_module("dcompress.api.frontier")
FAST = ["--epochs", "1", "--runs", "2", "--lr-grid", "0.01", "--val-per-class", "2", "--full-epochs", "1",
        "--test-limit", "12"]
GRID = ["--methods", "random,herding", "--budgets", "40KB,100KB", "--labels", "hard"]


def cli(*args):
    r = runner.invoke(app, [str(a) for a in args])
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    return r.exit_code, (json.loads(last) if last.startswith("{") else None), r


def frontier(shards, out, *extra):
    return cli("frontier", shards["train"], "--test", shards["test"], "-o", out, *GRID, *FAST, "--json", *extra)


stable = frontier_without_times


@pytest.fixture(scope="module")
def done(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        code, rep, r = frontier(shards, out)
    assert code == 0, r.output
    return {"out": out, "report": rep, "stderr": r.stderr}


def test_frontier_writes_four_files_and_shares_the_random_side(done):
    out, rep = done["out"], done["report"]
    assert rep["status"] == "ok" and len(rep["points"]) == 4 and rep["settings"]["lr_search"] == "grid"
    assert {f.name for f in out.iterdir()} >= {"frontier.json", "frontier.csv", "frontier.png", "frontier.md",
                                               "points", "random"}
    # one random side per (budget, labels): trained by the first method, reused by the second
    assert rep["counters"]["random_sides_trained"] == 2 and rep["counters"]["random_sides_reused"] == 2
    assert rep["shared"] == {"random_sides": 2, "points_using_them": 4,
                             "per_budget_labels": {"40KB/hard": 1, "100KB/hard": 1}}
    assert len(list((out / "random").glob("*.json"))) == 2
    for p in rep["points"]:
        assert p["status"] == "ok" and p["bytes"] <= p["budget_bytes"] and p["ipc"] >= 1
        assert set(p["seconds"]) >= {"distill", "compressed", "random", "full_data", "total"}
        assert len(p["accuracy"]["runs"]) == 2 and len(p["random"]["runs"]) == 2
    by = {p["name"]: p for p in rep["points"]}
    assert by["random-40KB-hard"]["random"] == by["herding-40KB-hard"]["random"]
    assert by["herding-40KB-hard"]["seconds"]["random"] < 0.5   # shared: nothing trained
    saved = json.loads((out / "frontier.json").read_text())
    assert stable(saved) == stable({k: v for k, v in rep.items() if k not in ("counters", "out", "status")}
                                   | {"status": "ok"})
    rows = list(csv.DictReader((out / "frontier.csv").open()))
    assert [r["method"] for r in rows] == ["random", "herding", "random", "herding"]
    # selections have no exact form: an outside reader loads what was evaluated
    assert all(p["outside_reader"] == {"images": "png", "same_as_evaluated": True} for p in rep["points"])
    assert all(r["outside_reader_mean"] == r["accuracy_mean"] for r in rows)
    assert Image.open(out / "frontier.png").size == (900, 560)
    md = (out / "frontier.md").read_text()
    assert "## Best choice per budget" in md and "## Where random is as good" in md
    assert "point 2/4: herding @ 40KB (hard)" in done["stderr"]


def test_same_command_again_keeps_every_point(done, shards):
    code, rep, r = frontier(shards, done["out"])
    assert code == 0, r.output
    assert rep["counters"]["points_kept"] == 4 and rep["counters"]["points_run"] == 0
    assert stable(rep) == stable({**done["report"], "counters": rep["counters"]})


def test_a_report_from_before_lr_search_is_resumed_as_a_grid_one(done, shards, tmp_path):
    out = tmp_path / "report"
    shutil.copytree(done["out"], out)
    state = json.loads((out / "frontier.json").read_text())
    del state["settings"]["lr_search"]
    (out / "frontier.json").write_text(json.dumps(state))
    code, rep, r = frontier(shards, out)
    assert code == 0 and rep["counters"]["points_kept"] == 4 and rep["settings"]["lr_search"] == "grid", r.output


def test_resume_after_an_interrupt_gives_the_same_report(done, shards, tmp_path, monkeypatch):
    out = tmp_path / "report"
    real_point, calls = frontier_mod._point, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_point(*a, **k)
    monkeypatch.setattr(frontier_mod, "_point", dying)
    code, rep, r = frontier(shards, out)
    assert code == 130 and rep["status"] == "interrupted", r.output
    state = json.loads((out / "frontier.json").read_text())
    assert state["status"] == "running" and len(state["points"]) == 2
    monkeypatch.setattr(frontier_mod, "_point", real_point)
    code, rep, r = frontier(shards, out)
    assert code == 0, r.output
    assert rep["counters"]["points_kept"] == 2 and rep["counters"]["points_run"] == 2
    assert stable(json.loads((out / "frontier.json").read_text())) == \
        stable(json.loads((done["out"] / "frontier.json").read_text()))


def test_another_input_or_settings_is_refused(done, shards, tmp_path):
    code, rep, _ = cli("frontier", shards["test"], "--test", shards["test"], "-o", done["out"], *GRID, *FAST, "--json")
    assert code == 2 and "another input" in rep["error"] and "--overwrite" in rep["error"]
    code, rep, _ = frontier(shards, done["out"], "--seed", "1")
    assert code == 2 and "settings.seed" in rep["error"]
    code, rep, _ = frontier(shards, done["out"], "--lr-search", "halving")
    assert code == 2 and "settings.lr_search was 'grid', now 'halving'" in rep["error"]
    code, rep, _ = frontier(shards, tmp_path / "r", "--lr-search", "bisect")
    assert code == 2 and "--lr-search must be one of grid, halving" in rep["error"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("mine")
    code, rep, _ = frontier(shards, tmp_path / "junk")
    assert code == 5 and "not a frontier report" in rep["error"]
    code, rep, _ = frontier(shards, tmp_path / "r", "--budgets", "lots")
    assert code == 2 and "--budget" in rep["error"]
    code, rep, _ = frontier(shards, tmp_path / "r", "--set", "nosuch:x=1")
    assert code == 2 and "not one of --methods" in rep["error"]


def test_a_larger_grid_keeps_the_points_it_still_asks_for(done, shards, tmp_path):
    """Adding a method (or budget, labels) reruns nothing finished: the new report holds the old
    points unchanged and only the new ones are run; a smaller grid drops points from the report."""
    import shutil

    out = tmp_path / "grown"
    shutil.copytree(done["out"], out)
    code, rep, r = cli("frontier", shards["train"], "--test", shards["test"], "-o", out, "--methods",
                       "random,herding,kcenter", "--budgets", "40KB,100KB", "--labels", "hard", *FAST, "--json")
    assert code == 0, r.output
    assert rep["counters"]["points_run"] == 2 and rep["counters"]["points_kept"] == 4
    assert rep["settings"]["methods"] == ["random", "herding", "kcenter"]
    old = {p["name"]: p for p in stable(done["report"])["points"]}
    new = {p["name"]: p for p in stable(rep)["points"]}
    assert all(new[n] == p for n, p in old.items()) and {"kcenter-40KB-hard", "kcenter-100KB-hard"} <= set(new)
    code, rep, r = cli("frontier", shards["train"], "--test", shards["test"], "-o", out, "--methods", "herding",
                       "--budgets", "40KB", "--labels", "hard", *FAST, "--json")
    assert code == 0 and [p["name"] for p in rep["points"]] == ["herding-40KB-hard"], r.output
    assert rep["counters"]["points_run"] == 0


def test_a_methods_own_set_reruns_its_points_only(shards, tmp_path):
    """`--set dq:bins=...` changed between runs: the dq points run again (their sets replaced),
    the random points are kept; a teacher `--set` is still the report's identity."""
    out = tmp_path / "sets"
    base = ["frontier", shards["train"], "--test", shards["test"], "-o", out, "--methods", "random,dq", "--budgets",
            "40KB", "--labels", "hard", *FAST, "--json"]
    code, first, r = cli(*base, "--set", "dq:bins=2")
    assert code == 0, r.output
    assert {p["name"]: p["sets"] for p in first["points"]} == {"random-40KB-hard": [], "dq-40KB-hard": ["bins=2"]}
    code, again, r = cli(*base, "--set", "dq:bins=3")
    assert code == 0, r.output
    assert again["counters"]["points_run"] == 1 and again["counters"]["points_kept"] == 1
    by = {p["name"]: p for p in again["points"]}
    assert by["dq-40KB-hard"]["sets"] == ["bins=3"]
    assert stable(again)["points"][0] == stable(first)["points"][0]            # random kept as it was
    m = json.loads((out / "points" / "dq-40KB-hard" / "manifest.json").read_text())["dcompress"]
    assert m["method"]["config"]["bins"] == 3
    code, rep, _ = cli(*base, "--set", "dq:bins=3", "--set", "teacher:epochs=1")
    assert code == 2 and "teacher_sets" in rep["error"]


def test_overwrite_replaces_a_report_of_other_settings(done, shards, tmp_path):
    import dcompress

    assert dcompress.frontier is frontier_mod.frontier          # the public API table
    out = tmp_path / "report"
    shutil.copytree(done["out"], out)
    code, rep, r = frontier(shards, out, "--seed", "1", "--overwrite")
    assert code == 0, r.output
    assert rep["settings"]["seed"] == 1 and rep["counters"]["points_run"] == 4
    assert len(list((out / "random").glob("*.json"))) == 2     # the seed-0 random sides are gone


def test_a_failing_point_is_recorded_and_the_frontier_goes_on(shards, tmp_path):
    out = tmp_path / "report"
    code, rep, r = cli("frontier", shards["train"], "--test", shards["test"], "-o", out, "--methods", "random",
                       "--budgets", "1KB,40KB", *FAST, "--json")
    assert code == 1 and rep["status"] == "incomplete", r.output
    bad, good = rep["points"]
    assert bad["status"] == "error" and "below one image per class" in bad["error"] and bad["exit_code"] == 2
    assert good["status"] == "ok" and "random-1KB-hard" in rep["error"]
    assert (out / "frontier.md").is_file() and "failed" in (out / "frontier.md").read_text()


def test_gates_exit_9_naming_the_points(done, shards, tmp_path):
    out = tmp_path / "report"
    shutil.copytree(done["out"], out)
    code, rep, r = frontier(shards, out, "--min-gain-over-random", "1000", "--min-accuracy", "0")
    assert code == 9 and rep["status"] == "gate_failed", r.output
    assert {g["point"] for g in rep["failed"]} == {p["name"] for p in rep["points"]}
    assert all(g["gate"] == "min_gain_over_random" for g in rep["failed"])
    assert "herding-100KB-hard" in rep["error"]


def test_killed_mid_point_and_rerun_ends_with_the_same_report(done, shards, tmp_path):
    """SIGKILL after the third point's set was written, before its evaluation (and once after a
    point was recorded, in the rerun): the same command finishes it, the report is the uninterrupted one's."""
    import os
    import subprocess
    import sys

    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "dcompress", "frontier", str(shards["train"]), "--test", str(shards["test"]),
           "-o", str(out), *GRID, *FAST, "--json"]
    for crash in ("distill.written:3", "frontier.point:1"):   # hits counted per process
        r = subprocess.run(cmd, env={**os.environ, "DCOMPRESS_CRASH_AT": crash}, capture_output=True, text=True)
        assert r.returncode == -9, r.stderr
    state = json.loads((out / "frontier.json").read_text())
    assert state["status"] == "running" and [p["name"] for p in state["points"]] == \
        ["random-40KB-hard", "herding-40KB-hard", "random-100KB-hard"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counters"]["points_kept"] == 3
    assert stable(json.loads((out / "frontier.json").read_text())) == \
        stable(json.loads((done["out"] / "frontier.json").read_text()))
    assert (out / "frontier.png").read_bytes() != b""


def test_a_full_disk_stops_with_exit_7_and_keeps_the_finished_points(shards, tmp_path, monkeypatch):
    import errno

    out = tmp_path / "report"
    real_point, calls = frontier_mod._point, []

    def full(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_point(*a, **k)
    monkeypatch.setattr(frontier_mod, "_point", full)
    code, rep, r = frontier(shards, out)
    assert code == 7 and rep["error_type"] == "ResourceError", r.output
    state = json.loads((out / "frontier.json").read_text())
    assert [p["name"] for p in state["points"]] == ["random-40KB-hard"] and state["points"][0]["status"] == "ok"
