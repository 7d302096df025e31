"""Issue 23 (items 3, 4, 7, 8, 9): progress with rate and ETA, first-step estimates, an honest
interrupt message, an evaluate that resumes its finished runs, reports and help for people."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcompress.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(*args, env=None):
    r = runner.invoke(app, [str(a) for a in args], env=env)
    lines = r.stdout.strip().splitlines()
    return r, (json.loads(lines[-1]) if lines and "--json" in args else None)


# ------------------------------------------------------------------------------------------- progress

def test_plain_progress_has_rate_eta_and_a_first_step_estimate(monkeypatch, capsys):
    from dcompress import console

    monkeypatch.setattr(console, "ESTIMATE_MIN_S", 0.0)
    clock = iter([99.0, 100.0, 102.0, 104.0, 120.0])     # the Reporter reads the clock once when made
    monkeypatch.setattr(console.time, "time", lambda: next(clock))
    rep = console.Reporter(interval=0)
    rep.tty = False
    rep.loss = 34.01121520996094
    for done in (0, 1, 2, 10):
        rep(done, 10, "dm")
    err = capsys.readouterr().err
    assert "dm: 0/10 [00:00]" in err
    assert "dm: iteration 1 took 2.0 s: ~20 s for 10" in err
    assert "dm: 1/10 [00:02<00:18, 2 s/it], loss 34.01" in err
    assert "dm: 10/10 [00:20<00:00, 2 s/it]" in err
    assert "34.0112" not in err


def test_shard_progress_reaches_its_end(idx_dir, tmp_path):
    r, _ = run("shard", idx_dir, tmp_path / "s", "--shard-size", "10")
    assert r.exit_code == 0
    assert "sharding: 36/36" in r.stderr and "0/36" in r.stderr


def test_dry_run_measures_the_first_iteration(shards, tmp_path):
    r, rep = run("distill", shards["train"], "-m", "dm", "--ipc", "1", "--set", "iterations=40", "--set",
                 "batch_real=4", "-o", tmp_path / "o", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    est = rep["plan"]["estimate"]
    assert est["iterations"] == 40 and est["first_iteration_s"] > 0 and est["fit_s"] >= 0
    assert "iteration 1 took" in r.stderr and "for 40" in r.stderr and not (tmp_path / "o").exists()
    r, _ = run("distill", shards["train"], "-m", "dm", "--ipc", "1", "--set", "iterations=40", "--set",
               "batch_real=4", "-o", tmp_path / "o", "--dry-run")
    assert "estimate fit" in r.stdout and "{" not in r.stdout


# ------------------------------------------------------------------------------------------- interrupts

def _distill_then_signal(shards, tmp_path, *extra):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "dcompress.cli", "distill", str(shards["train"]), "--method", "dm", "--ipc", "1",
           "--set", "iterations=100000", "--set", "batch_real=4", "-o", str(out), "--json", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / ".o.dcompress-work" / "metrics.jsonl"
    deadline = time.time() + 60
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert metrics.exists(), proc.stderr.read() if proc.poll() is not None else "no iteration within 60 s"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, json.loads(stdout.strip().splitlines()[-1]), stderr, tmp_path / ".o.dcompress-work"


def test_ctrl_c_between_checkpoints_saves_the_iteration_under_way(shards, tmp_path):
    import torch

    code, rep, stderr, work = _distill_then_signal(shards, tmp_path, "--ckpt-every", "100000")
    assert code == 130 and rep["status"] == "interrupted" and "Traceback" not in stderr
    state = torch.load(work / "state.pt", weights_only=True)
    assert state["iteration"] >= 1
    assert f"checkpoint kept in {work} (iteration {state['iteration']}): run the same command again" in rep["error"]


def test_ctrl_c_without_a_checkpoint_says_nothing_was_kept(shards, tmp_path):
    code, rep, stderr, work = _distill_then_signal(shards, tmp_path, "--ckpt-every", "0")
    assert code == 130 and rep["status"] == "interrupted"
    assert "before the first checkpoint: nothing was kept" in rep["error"]
    assert "checkpoint kept" not in rep["error"] and "resume" not in rep["error"]
    assert not work.exists()


# ------------------------------------------------------------------------------------------- evaluate

def test_evaluate_prints_each_run_and_resumes_finished_runs(shards, tmp_path, monkeypatch):
    from dcompress.train import evaluate as ev

    out = tmp_path / "set"
    r, _ = run("distill", shards["train"], "-m", "random", "--ipc", "2", "--labels", "hard", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    args = ("evaluate", out, "--test", shards["test"], "--runs", "3", "--epochs", "2", "--json")
    real_accuracy, calls = ev.accuracy, []

    def second_run_interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_accuracy(*a, **k)
    monkeypatch.setattr(ev, "accuracy", second_run_interrupted)
    r, rep = run(*args)
    assert r.exit_code == 130 and rep["status"] == "interrupted"
    assert "1 finished run(s) kept in" in rep["error"] and "run the same command again to resume" in rep["error"]
    assert "compressed run 1/3:" in r.stderr and "% test accuracy" in r.stderr
    monkeypatch.setattr(ev, "accuracy", real_accuracy)
    r, rep = run(*args)
    assert r.exit_code == 0, r.output
    assert rep["resumed_runs"] == {"compressed": 1, "random": 0, "outside_reader": 0} and len(rep["compressed"]["runs"]) == 3
    assert "(finished before the interrupt, reused)" in r.stderr
    assert not list((Path(os.environ["DCOMPRESS_CACHE"]) / "evaluations").glob("*.json"))   # cleared when done
    r, rep = run(*args)
    assert rep["resumed_runs"] == {"compressed": 0, "random": 0, "outside_reader": 0}


# ------------------------------------------------------------------------------------------- output, help, config

def test_reports_for_people_have_no_reprs(shards, tmp_path):
    r, _ = run("distill", shards["train"], "-m", "random", "--ipc", "1", "--labels", "hard", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "timings: read" in r.stdout and " s, " in r.stdout and "{" not in r.stdout and "None" not in r.stdout
    r, _ = run("inspect", tmp_path / "o")
    assert r.exit_code == 0 and "{" not in r.stdout and "'" not in r.stdout


def test_error_lines_are_never_wrapped(tmp_path):
    long = tmp_path / ("x" * 150) / "missing-{000..001}.tar"
    r, _ = run("distill", long, "-m", "random", "--ipc", "1", "-o", tmp_path / "o", env={"COLUMNS": "60"})
    line = next(x for x in r.stderr.splitlines() if x.startswith("error:"))
    assert r.exit_code == 4 and str(long.parent) in line


def test_refused_pickle_and_undecodable_image_messages(tmp_path):
    from dcompress.io.codecs import decode_image

    with pytest.raises(OSError) as e:
        decode_image(b"not an image at all", "png", fast=False)
    assert "BytesIO" not in str(e.value)


def test_help_uses_metavars_and_no_bool_column():
    for cmd, want in (("distill", "distill [OPTIONS] URLS..."), ("shard", "shard [OPTIONS] SRC OUT")):
        r = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "120"})
        assert want in r.stdout and "{" not in r.stdout.splitlines()[1] and "<bool>" not in r.stdout
    r = runner.invoke(app, ["shard", "--help"], env={"COLUMNS": "200"})
    assert "ImageFolder" in r.stdout.split("--split", 1)[1].split("--shard-size")[0]


def test_methods_name_explains_its_keys():
    r, rep = run("methods", "dm", "--json")
    m = rep["method"]
    assert r.exit_code == 0 and m["option_types"]["pix_init"] == "real | noise"
    assert "pixels" in m["option_help"]["lr_img"] and m["options"]["iterations"] == 20000
    r, _ = run("methods", "dm")
    assert "lr_img" in r.stdout and "float" in r.stdout and "SGD lr on the pixels" in r.stdout
    r, rep = run("methods", "DM", "--json")
    assert r.exit_code == 2 and "did you mean 'dm'?" in rep["error"]


def test_method_and_key_near_misses_suggest_and_name_no_class(shards, tmp_path):
    r, rep = run("distill", shards["train"], "-m", "DM", "--ipc", "1", "-o", tmp_path / "o", "--json")
    assert r.exit_code == 2 and "did you mean 'dm'?" in rep["error"]
    r, rep = run("distill", shards["train"], "-m", "dm", "--ipc", "1", "--set", "lr_im=2", "-o", tmp_path / "o",
                 "--json")
    assert r.exit_code == 2 and "did you mean 'lr_img'?" in rep["error"] and "for method dm" in rep["error"]
    r, rep = run("distill", shards["train"], "-m", "dm", "--ipc", "1", "--set", "lr_img=-1", "-o", tmp_path / "o",
                 "--json")
    assert r.exit_code == 2 and "method dm: 'lr_img' must be > 0" in rep["error"] and "Config" not in rep["error"]


def test_config_file_holds_run_options_under_flags(shards, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ipc: 2\nseed: 3\nlabels: hard\n")
    r, rep = run("distill", shards["train"], "-m", "random", "--config", cfg, "-o", tmp_path / "a", "--dry-run",
                 "--json")
    assert r.exit_code == 0, r.output
    assert rep["plan"]["ipc"] == 2
    r, rep = run("distill", shards["train"], "-m", "random", "--config", cfg, "--set", "ipc=3", "-o", tmp_path / "b",
                 "--dry-run", "--json")
    assert rep["plan"]["ipc"] == 3
    r, rep = run("distill", shards["train"], "-m", "random", "--config", cfg, "--set", "ipc=3", "--ipc", "1",
                 "-o", tmp_path / "c", "--dry-run", "--json")
    assert rep["plan"]["ipc"] == 1
    from dcompress.api.request import DistillRequest

    req = DistillRequest.make("random", config=cfg)
    assert (req.ipc, req.seed, req.labels, req.shard_size) == (2, 3, "hard", 1000)
    cfg.write_text("ipc: 2\nbogus: 1\n")
    r, rep = run("distill", shards["train"], "-m", "random", "--config", cfg, "-o", tmp_path / "d", "--json")
    assert r.exit_code == 2 and "unknown config key 'bogus'" in rep["error"]
