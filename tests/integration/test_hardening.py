"""Regression tests for the severe hardening defects: no command from a manifest, never
delete the input, no memory bomb from a label; plus signals, locks and leftovers."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcompress.cli import app
from tests.conftest import make_images, png_bytes, write_tar

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    lines = r.stdout.strip().splitlines()
    return r, (json.loads(lines[-1]) if lines and "--json" in args else None)


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def train_copy(shards, tmp_path) -> Path:
    dest = tmp_path / "in" / "train"
    shutil.copytree(shards["train"], dest)
    return dest


def test_manifest_source_pipe_url_is_never_run(shards, tmp_path):
    out = tmp_path / "o"
    assert run("distill", shards["train"], "--method", "random", "--ipc", "1", "--labels", "hard", "-o", out)[0].exit_code == 0
    marker = tmp_path / "pwned"
    m = json.loads((out / "manifest.json").read_text())
    m["dcompress"]["source"]["urls"] = [f"pipe:touch {marker}"]
    (out / "manifest.json").write_text(json.dumps(m))
    r, rep = run("evaluate", out, "--test", shards["test"], "--runs", "1", "--epochs", "1", "--json")
    assert r.exit_code == 4 and "refusing recorded url" in rep["error"] and "dcompress.source.urls" in rep["error"]
    assert not marker.exists()


@pytest.mark.parametrize("row", ["pipe:touch {marker}", "/etc/passwd", "../outside.tar", "http://127.0.0.1:9/x.tar",
                                 "sub/../../outside.tar"])
def test_input_manifest_rows_stay_inside_their_folder(train_copy, tmp_path, row):
    marker = tmp_path / "pwned"
    m = json.loads((train_copy / "manifest.json").read_text())
    m["shardlist"][0]["url"] = row.format(marker=marker)
    (train_copy / "manifest.json").write_text(json.dumps(m))
    r, rep = run("distill", train_copy, "--method", "random", "--ipc", "1", "-o", tmp_path / "o", "--json")
    assert r.exit_code == 4 and "refusing url" in rep["error"] and "shardlist[0].url" in rep["error"]
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_allow_manifest_urls_opts_in(train_copy, tmp_path):
    m = json.loads((train_copy / "manifest.json").read_text())
    m["shardlist"][0]["url"] = str(train_copy / m["shardlist"][0]["url"])   # absolute, still our file
    (train_copy / "manifest.json").write_text(json.dumps(m))
    r, _ = run("distill", train_copy, "--method", "random", "--ipc", "1", "--labels", "hard", "-o", tmp_path / "o")
    assert r.exit_code == 4
    r, _ = run("distill", train_copy, "--method", "random", "--ipc", "1", "--labels", "hard", "-o", tmp_path / "o",
               "--allow-manifest-urls")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("where", ["same", "inside", "parent", "shard-file"])
def test_output_overlapping_the_input_is_refused_and_input_untouched(train_copy, where):
    target = {"same": train_copy, "inside": train_copy / "out", "parent": train_copy.parent,
              "shard-file": train_copy / "train-000000.tar"}[where]
    before = tree_digest(train_copy.parent)
    src = [train_copy] if where != "shard-file" else [str(train_copy / "train-{000000..000003}.tar")]
    r, rep = run("distill", *src, "--method", "random", "--ipc", "1", "-o", target, "--overwrite", "--json")
    assert r.exit_code == 2, r.output
    assert "would replace input" in rep["error"] or "overlaps the input" in rep["error"]
    assert tree_digest(train_copy.parent) == before


def test_output_onto_another_shard_folder_is_refused(shards, train_copy, tmp_path):
    before = tree_digest(train_copy)
    r, rep = run("distill", shards["train"], "--method", "random", "--ipc", "1", "-o", train_copy, "--json", "--overwrite")
    assert r.exit_code == 2 and "dcompress input shards" in rep["error"]
    assert tree_digest(train_copy) == before


def test_shard_refuses_to_overwrite_without_flag_and_overlap(idx_dir, tmp_path):
    out = tmp_path / "s"
    assert run("shard", idx_dir, out, "--format", "idx")[0].exit_code == 0
    r, rep = run("shard", idx_dir, out, "--format", "idx", "--json")
    assert r.exit_code == 2 and "--overwrite" in rep["error"]
    assert run("shard", idx_dir, out, "--format", "idx", "--overwrite")[0].exit_code == 0
    r, rep = run("shard", idx_dir, idx_dir / "sub", "--json")
    assert r.exit_code == 2 and "overlaps the input" in rep["error"]


def _tar_with_label(path: Path, label: bytes) -> Path:
    x, y = make_images(2, classes=2)
    samples = [{"__key__": f"k{i}", "png": png_bytes(x[i]), "cls": str(int(y[i])).encode()} for i in range(len(y))]
    samples.append({"__key__": "huge", "png": png_bytes(x[0]), "cls": label})
    return write_tar(path, samples)


def test_huge_label_is_an_input_error_at_once(tmp_path):
    tar = _tar_with_label(tmp_path / "a.tar", b"1000000000")
    r, rep = run("distill", tar, "--method", "random", "--ipc", "1", "-o", tmp_path / "o", "--json")
    assert r.exit_code == 4 and "'huge'" in rep["error"] and "implausibly large" in rep["error"]


def test_label_beyond_int64_is_an_input_error_like_any_huge_label(tmp_path):
    # issue 23: one rule for every label outside [0, 1e6), int64 or not (was a skipped bad sample, exit 0/3)
    tar = _tar_with_label(tmp_path / "a.tar", b"99999999999999999999999")
    for more in (("--max-bad", "0"), ()):
        r, rep = run("distill", tar, "--method", "random", "--ipc", "1", "--labels", "hard", "-o", tmp_path / "o",
                     "--json", *more)
        assert r.exit_code == 4 and "'huge'" in rep["error"] and "a.tar" in rep["error"], rep
        assert "99999999999999999999999 is implausibly large" in rep["error"]
    assert not (tmp_path / "o").exists()


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    x, y = make_images(2, classes=2)
    samples = [{"__key__": f"k{i}", "png": png_bytes(x[i]), "cls": str(int(y[i])).encode()} for i in range(len(y))]
    samples.append({"__key__": "bomb", "png": bomb, "cls": b"0"})
    tar = write_tar(tmp_path / "a.tar", samples)
    r, rep = run("distill", tar, "--method", "random", "--ipc", "1", "-o", tmp_path / "o", "--json", "--max-bad", "0")
    assert r.exit_code == 3 and "--max-pixels" in rep["error"] and "'bomb'" in rep["error"]


def test_gzip_tar_is_not_a_truncated_shard(shards, tmp_path):
    import gzip

    src = sorted(shards["train"].glob("*.tar"))
    for p in src:
        (tmp_path / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes()))
    r, rep = run("distill", str(tmp_path / "train-{000000..000003}.tar.gz"), "--method", "random", "--ipc", "1",
                 "--labels", "hard", "-o", tmp_path / "o", "--json", "--max-bad", "0")
    assert r.exit_code == 0, r.output
    assert rep["bad_samples"] == 0


def test_usage_errors_from_click_are_json_too():
    r = runner.invoke(app, ["distill", "x.tar", "--json"])
    rep = json.loads(r.stdout)
    assert r.exit_code == 2 and rep["status"] == "error" and "--method" in rep["error"]
    r = runner.invoke(app, ["verify", "x", "--bogus-flag", "--json"])
    assert r.exit_code == 2 and "--bogus-flag" in json.loads(r.stdout)["error"]


def test_a_held_output_lock_gives_busy(shards, tmp_path):
    from dcompress.io.atomic import OutputLock

    out = tmp_path / "o"
    with OutputLock(out):
        r, rep = run("distill", shards["train"], "--method", "random", "--ipc", "1", "-o", out, "--json")
        assert r.exit_code == 8 and f"pid {os.getpid()}" in rep["error"]
    assert not (tmp_path / ".o.lock").exists()
    assert run("distill", shards["train"], "--method", "random", "--ipc", "1", "--labels", "hard", "-o", out)[0].exit_code == 0


def test_leftovers_of_killed_writers_are_cleaned_and_a_lost_swap_restored(shards, tmp_path):
    out = tmp_path / "o"
    args = ("distill", shards["train"], "--method", "random", "--ipc", "1", "--labels", "hard", "-o", out)
    assert run(*args)[0].exit_code == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.replace(out, tmp_path / f".o.old-{dead.pid}")               # killed between the two renames
    (tmp_path / f".o.tmp-{dead.pid}").mkdir()                        # killed while writing
    r, rep = run(*args, "--json")
    assert r.exit_code == 0 and rep.get("up_to_date") is True       # the restored output is this run's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_atomic_swap_exchanges_in_one_step(tmp_path):
    from dcompress.io.atomic import AtomicDir

    target = tmp_path / "out"
    for v in (1, 2):
        with AtomicDir(target) as tmp:
            (tmp / "manifest.json").write_text(json.dumps({"dcompress": {"v": v}}))
    assert json.loads((target / "manifest.json").read_text())["dcompress"]["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_keeps_checkpoint_and_says_how_to_resume(shards, tmp_path, sig, code):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "dcompress.cli", "distill", str(shards["train"]), "--method", "dm", "--ipc", "1",
           "--set", "iterations=100000", "--set", "batch_real=4", "--ckpt-every", "1", "-o", str(out), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # default SIGINT in the child: a suite started as a background job of a non-interactive shell
    # (`bash .ci/run &`) passes SIGINT on as ignored, and Python then leaves it ignored
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = tmp_path / ".o.dcompress-work" / "state.pt"
    deadline = time.time() + 60
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert state.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint within 60 s"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    rep = json.loads(stdout.strip().splitlines()[-1])
    assert proc.returncode == code and rep["status"] == "interrupted" and rep["exit_code"] == code
    assert "Traceback" not in stderr and "resume" in rep["error"] and str(state.parent) in rep["error"]
    assert state.exists() and not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock")]


def test_a_failed_run_leaves_no_parent_folders_it_created(tmp_path):
    r, rep = run("distill", tmp_path / "missing-{000..001}.tar", "--method", "random", "--ipc", "1",
                 "-o", tmp_path / "new" / "deeper" / "out", "--json")
    assert r.exit_code == 4 and not (tmp_path / "new").exists()
    bad = write_tar(tmp_path / "bad.tar", [])
    r, rep = run("distill", bad, "--method", "random", "--ipc", "1", "-o", tmp_path / "new" / "deeper" / "out", "--json")
    assert r.exit_code == 4 and not (tmp_path / "new").exists()
