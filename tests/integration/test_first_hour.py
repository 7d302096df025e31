"""Issue 23's first hour, replayed: a damaged input never passes silently (items 1, 2, 5, 10).

Each test does what the data engineer did (a shard cut in half, chmod 000, TarWriter shards
without --label-key, a .cls of 10^22) and asserts the exit code, the report's accounting and a
message naming the file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from typer.testing import CliRunner

from dcompress.cli import app
from dcompress.io.sources import make_shards
from tests.conftest import make_images, png_bytes, write_idx, write_tar

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def distill(*args) -> tuple[int, dict]:
    r = runner.invoke(app, ["distill", *map(str, args), "--method", "random", "--ipc", "2", "--labels", "hard",
                            "--device", "cpu", "--json"])
    return r.exit_code, json.loads(r.stdout)


@pytest.fixture(scope="module")
def idx_folders(tmp_path_factory) -> dict:
    """300 images of 3 classes as idx files: class-sorted and shuffled."""
    base = tmp_path_factory.mktemp("idx300")
    x, y = make_images(100, classes=3)
    perm = np.random.default_rng(0).permutation(len(y))
    write_idx(base / "sorted", "train", x, y)
    write_idx(base / "shuffled", "train", x[perm], y[perm])
    return {"sorted": base / "sorted", "shuffled": base / "shuffled"}


def sharded(idx: Path, out: Path) -> Path:
    make_shards(idx, out, fmt="idx", split="train", shard_size=100)
    return out


def cut(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


# ---------------------------------------------------------------------------- 1. damaged shards

def test_half_a_shard_fails_with_exit_4_naming_it(idx_folders, tmp_path):
    src = sharded(idx_folders["shuffled"], tmp_path / "in")
    shard = src / "train-000001.tar"
    cut(shard, shard.stat().st_size // 2 - 120)            # mid-member, as `truncate -s` does
    code, rep = distill(src, "-o", tmp_path / "o")
    assert code == 4 and rep["status"] == "error" and "train-000001.tar" in rep["error"], rep
    assert "damaged shard" in rep["error"] and "of the 100 samples" in rep["error"] and "--max-bad" in rep["error"]
    assert not (tmp_path / "o").exists()


def test_skipping_a_damaged_shard_is_opt_in_and_counted_once(idx_folders, tmp_path):
    src = sharded(idx_folders["shuffled"], tmp_path / "in")
    shard = src / "train-000001.tar"
    cut(shard, shard.stat().st_size // 2 - 120)
    code, rep = distill(src, "-o", tmp_path / "o", "--max-bad", "100")
    assert code == 0, rep
    acct = rep["input"]
    lost = 100 - acct["damaged_shards"][0]["read"]
    assert acct["samples_expected"] == 300 and acct["samples_read"] == 300 - lost and acct["shards"] == 3
    assert acct["samples_used"] + acct["bad_samples"]["count"] == 300          # every sample counted once
    assert acct["bad_samples"]["causes"] == {"damaged_shard": lost} and rep["bad_samples"] == lost
    assert acct["damaged_shards"][0]["url"].endswith("train-000001.tar")
    source = json.loads((tmp_path / "o" / "manifest.json").read_text())["dcompress"]["source"]
    assert source["samples_expected"] == 300 and source["samples_read"] == 300 - lost
    assert source["damaged_shards"] == acct["damaged_shards"]
    # the store is reused: the same accounting, and the same limits (default: exit 4 again)
    code, again = distill(src, "-o", tmp_path / "o2", "--max-bad", "100")
    assert code == 0 and again["store"]["reused"] and again["input"] == acct
    code, rep = distill(src, "-o", tmp_path / "o3")
    assert code == 4 and "train-000001.tar" in rep["error"]
    code, rep = distill(src, "-o", tmp_path / "o3", "--max-bad", str(lost - 1))
    assert code == 3 and "train-000001.tar" in rep["error"]


def test_class_sorted_shards_name_the_damaged_shard_not_an_empty_class(idx_folders, tmp_path):
    src = sharded(idx_folders["sorted"], tmp_path / "in")
    cut(src / "train-000002.tar", 1000)                     # class 2 is all in this shard
    code, rep = distill(src, "-o", tmp_path / "o")
    assert code == 4 and "train-000002.tar" in rep["error"] and "has 0 images" not in rep["error"], rep
    code, rep = distill(src, "-o", tmp_path / "o", "--max-bad", "500")
    assert code == 4 and "has 0 images" in rep["error"] and "train-000002.tar" in rep["error"], rep


def test_manifest_row_disagreeing_with_the_shard_is_damage(idx_folders, tmp_path):
    src = sharded(idx_folders["shuffled"], tmp_path / "in")
    m = json.loads((src / "manifest.json").read_text())
    for key, value, words in (("nsamples", 101, "read 100 of the 101 samples"),
                              ("md5sum", "0" * 32, "md5"), ("filesize", 12345, "12345")):
        bad = json.loads(json.dumps(m))
        bad["shardlist"][0][key] = value
        (src / "manifest.json").write_text(json.dumps(bad))
        code, rep = distill(src, "-o", tmp_path / "o")
        assert code == 4 and "train-000000.tar" in rep["error"] and words in rep["error"], (key, rep)
    (src / "manifest.json").write_text(json.dumps(m))
    code, rep = distill(src, "-o", tmp_path / "o")
    assert code == 0 and rep["input"]["damaged_shards"] == [] and rep["input"]["samples_read"] == 300, rep


def test_a_truncation_without_manifest_is_damage_counted_once(tmp_path):
    x, y = make_images(4, classes=2)
    tar = write_tar(tmp_path / "a.tar", [{"__key__": f"k{i}", "png": png_bytes(x[i]), "cls": b"%d" % y[i]}
                                         for i in range(len(y))])
    cut(tar, tar.stat().st_size // 2 - 100)
    code, rep = distill(tar, "-o", tmp_path / "o", "--ipc", "1")
    assert code == 4 and "a.tar" in rep["error"] and "truncated tar" in rep["error"], rep
    code, rep = distill(tar, "-o", tmp_path / "o", "--ipc", "1", "--max-bad", "5")
    assert code == 0, rep
    bad = rep["input"]["bad_samples"]
    assert bad["causes"].get("damaged_shard") == 1 and "stream" not in bad["causes"], bad
    assert rep["input"]["samples_expected"] == rep["input"]["samples_read"]      # the shard's own end


# ---------------------------------------------------------------------------- 2. unreadable input

def _no_dac_override() -> list[str]:
    """A prefix that runs a command without the permission override (root reads chmod 000 files)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and no setpriv to drop CAP_DAC_OVERRIDE")
    probe = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode().strip()}")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _cli(args, tmp_path) -> tuple[int, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DCOMPRESS_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([*_no_dac_override(), sys.executable, "-m", "dcompress", *map(str, args), "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    return r.returncode, json.loads(r.stdout)


@pytest.mark.parametrize("what", ["shard", "folder"])
def test_unreadable_input_is_exit_4_naming_it(shards, tmp_path, what):
    src = tmp_path / "in"
    shutil.copytree(shards["train"], src)
    target = src / "train-000000.tar" if what == "shard" else src
    os.chmod(target, 0)
    try:
        code, rep = _cli(["distill", src, "-o", tmp_path / "o", "--method", "random", "--ipc", "1",
                          "--labels", "hard", "--device", "cpu"], tmp_path)
    finally:
        os.chmod(target, 0o755)
    assert code == 4 and rep["error_type"] == "InputDataError", rep
    assert "Permission denied" in rep["error"] and str(target.name) in rep["error"]
    assert "cache" not in rep["error"] and "write" not in rep["error"]


@pytest.mark.parametrize("what", ["class folder", "image"])
def test_unreadable_image_folder_is_exit_4_naming_it(tmp_path, what):
    x, _ = make_images(2, classes=2)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "imgs" / c / f"{i}.png").write_bytes(png_bytes(x[i]))
    target = tmp_path / "imgs" / "b" if what == "class folder" else tmp_path / "imgs" / "b" / "1.png"
    os.chmod(target, 0)
    try:
        code, rep = _cli(["shard", tmp_path / "imgs", tmp_path / "sh"], tmp_path)
    finally:
        os.chmod(target, 0o755)
    assert code == 4 and str(target) in rep["error"] and "Permission denied" in rep["error"], rep


# ---------------------------------------------------------------------------- 5. the label key

def test_tarwriter_shards_without_label_key_are_a_config_error_on_the_first_shard(tmp_path):
    x, _ = make_images(100, classes=2)
    (tmp_path / "in").mkdir()
    for s in range(2):
        with wds.TarWriter(str(tmp_path / "in" / f"part-{s}.tar")) as w:
            for i in range(100):
                w.write({"__key__": f"s{s}_{i:04d}", "png": png_bytes(x[i]), "json": {"label": i % 2}})
    code, rep = distill(tmp_path / "in", "-o", tmp_path / "o", "--ipc", "1")
    assert code == 2 and rep["error_type"] == "UsageError" and "part-0.tar" in rep["error"], rep
    assert "pick the label with --label-key" in rep["error"] and "bad samples" not in rep["error"]
    code, rep = distill(tmp_path / "in", "-o", tmp_path / "o", "--ipc", "1", "--label-key", "json:label")
    assert code == 0 and rep["input"]["bad_samples"]["count"] == 0, rep


def test_one_sample_without_its_label_is_still_a_bad_sample(tmp_path):
    x, y = make_images(3, classes=2)
    ss = [{"__key__": f"k{i}", "png": png_bytes(x[i]), "cls": b"%d" % y[i]} for i in range(len(y))]
    ss.insert(0, {"__key__": "nolabel", "png": png_bytes(x[0])})   # first, before any labelled sample
    tar = write_tar(tmp_path / "a.tar", ss)
    code, rep = distill(tar, "-o", tmp_path / "o", "--ipc", "1")
    assert code == 0 and rep["input"]["bad_samples"]["causes"] == {"label_key": 1}, rep


# ---------------------------------------------------------------------------- 10. huge labels

@pytest.mark.parametrize("label", [b"1000000000", b"9223372036854775807", b"10000000000000000000000",
                                   b"-10000000000000000000000"])
def test_every_implausible_cls_is_exit_4_naming_shard_and_key(tmp_path, label):
    x, y = make_images(2, classes=2)
    ss = [{"__key__": f"k{i}", "png": png_bytes(x[i]), "cls": b"%d" % y[i]} for i in range(len(y))]
    ss.append({"__key__": "huge", "png": png_bytes(x[0]), "cls": label})
    tar = write_tar(tmp_path / "a.tar", ss)
    code, rep = distill(tar, "-o", tmp_path / "o", "--ipc", "1")
    assert code == 4 and "a.tar" in rep["error"] and "'huge'" in rep["error"], rep
    assert label.decode() in rep["error"]
