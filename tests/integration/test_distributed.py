"""torchrun (gloo on CPU, 2 processes): the same bytes as one process, one error, resumable.

Each case starts real `torchrun --standalone` jobs (a few seconds each); the fixtures are tiny.
Both sides run with OMP_NUM_THREADS=1 (torchrun's default for several workers): the bytes are
promised for equal intra-op thread counts (docs/distributed.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_images, write_idx

ROOT = Path(__file__).resolve().parents[2]
DM = ["--method", "dm", "--ipc", "2", "--set", "iterations=6", "--set", "model=convnet_w16", "--set", "batch_real=8",
      "--ckpt-every", "2", "--shard-size", "3", "--device", "cpu", "--json"]
DSA = ["--method", "dsa", "--ipc", "2", "--set", "iterations=2", "--set", "model=convnet_w16", "--set", "batch_real=8",
       "--set", "outer_loop=2", "--set", "inner_loop=1", "--set", "batch_train=4", "--shard-size", "3",
       "--device", "cpu", "--json"]
# manifest fields that differ between two equal runs: wall-clock seconds, the output's own name
VOLATILE_BLOCK = ("timings",)


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory) -> Path:
    """4 classes (2 per rank), 12 images each."""
    from dcompress.io.sources import make_shards

    d = tmp_path_factory.mktemp("idx4")
    x, y = make_images(12, classes=4)
    write_idx(d / "idx", "train", x, y)
    make_shards(d / "idx", d / "train", fmt="idx", split="train", shard_size=10)
    return d / "train"


@pytest.fixture(scope="module")
def dm_one(four_classes, tmp_path_factory) -> Path:
    """The one-process DM output the DM cases compare with (and evaluate)."""
    tmp = tmp_path_factory.mktemp("dm-one")
    r = dcompress(tmp, "distill", four_classes, *DM, "-o", tmp / "one")
    assert r.returncode == 0, r.stderr
    return tmp / "one"


def env(tmp_path: Path, **extra: str) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DCOMPRESS_CRASH", "RANK", "WORLD_SIZE",
                                                                   "LOCAL_RANK", "MASTER_"))}
    return {**e, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DCOMPRESS_CACHE": str(tmp_path / "cache"),
            **extra}


def dcompress(tmp_path: Path, *args, nproc: int = 1, restarts: int = 0, **extra: str) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "dcompress"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
         "--max-restarts", str(restarts), "--monitor-interval", "0.2", "-m", "dcompress"]
    return subprocess.run([*launch, *map(str, args)], cwd=tmp_path, env=env(tmp_path, **extra), capture_output=True,
                          text=True, timeout=300)


def one_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def assert_same_output(a: Path, b: Path, resumed: bool = False, metrics: bool = True) -> None:
    """Shards and figures byte for byte; the manifest block and metrics but for time and name.
    After a resume the loss curve marks the resume and the manifest says where it resumed."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        if n.endswith((".tar", ".png")) and not (resumed and n == "loss.png"):
            assert (a / n).read_bytes() == (b / n).read_bytes(), n
    blocks = []
    for d in (a, b):
        block = json.loads((d / "manifest.json").read_text())["dcompress"]
        for k in VOLATILE_BLOCK:
            block.pop(k)
        block["source"].pop("store", None)            # the decoded store lives in each run's cache
        if resumed:
            block["info"].pop("resumed_from")
        for k in ("graph_build_s", "greedy_s"):      # DQ's GraphCut timings
            block["info"].pop(k, None)
        blocks.append(block)
    assert blocks[0] == blocks[1]
    if not metrics:
        return
    rows = [[{k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in (d / "metrics.jsonl").open()
             if json.loads(ln)["event"] == "iteration"] for d in (a, b)]
    assert rows[0] == rows[1] and rows[0]


def test_dm_two_ranks_via_nproc_same_bytes_as_one_process(four_classes, dm_one, tmp_path):
    """DM, classes split; launched by `dcompress distill --nproc 2` (torchrun's agent in-process);
    the 3 shards are written by ranks 0, 1, 0."""
    two = dcompress(tmp_path, "distill", four_classes, *DM, "-o", tmp_path / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    report = one_json(two.stdout)                      # rank 0's report only
    assert report["status"] == "ok" and report["samples"] == 8 and report["shards"] == 3
    assert_same_output(dm_one, tmp_path / "two")
    assert not list(tmp_path.glob(".two.*")), "work folder or temp output left behind"


def test_dsa_two_ranks_same_bytes_as_one_process(four_classes, tmp_path):
    """DSA (DC + Siamese augmentation): classes split, images all-gathered for the inner loop
    each outer step; plain torchrun."""
    one = dcompress(tmp_path, "distill", four_classes, *DSA, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = dcompress(tmp_path, "distill", four_classes, *DSA, "-o", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr
    assert one_json(two.stdout)["status"] == "ok"
    assert_same_output(tmp_path / "one", tmp_path / "two")


def test_killed_rank_restarts_from_checkpoint_with_same_bytes(four_classes, dm_one, tmp_path):
    # rank 1 is SIGKILLed after the 2nd checkpoint (iteration 4); torchrun restarts both workers
    r = dcompress(tmp_path, "distill", four_classes, *DM, "-o", tmp_path / "out", nproc=2, restarts=1,
                  DCOMPRESS_CRASH_AT="iter:5", DCOMPRESS_CRASH_RANK="1")
    assert r.returncode == 0, r.stderr
    report = one_json(r.stdout)
    assert report["resumed_from"] == 4, report
    assert_same_output(dm_one, tmp_path / "out", resumed=True)


def test_failure_is_reported_once_with_our_exit_code(four_classes, tmp_path):
    # every rank meets the same bad input: one error line, one JSON object, and `--nproc` exits
    # with the failing rank's code
    r = dcompress(tmp_path, "distill", four_classes, *DM, "--set", "lr_img=-1", "-o", tmp_path / "o", "--nproc", "2")
    assert r.returncode == 2, r.stderr
    obj = one_json(r.stdout)
    assert obj["status"] == "error" and obj["exit_code"] == 2 and obj["world_size"] == 2, obj
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
    usage = dcompress(tmp_path, "distill", four_classes, *DM, "-o", tmp_path / "q", "--nproc", "0")
    assert usage.returncode == 2 and "--nproc must be >= 1" in one_json(usage.stdout)["error"]


def test_unsupported_method_refuses_under_torchrun(shards, tmp_path, monkeypatch):
    from dcompress import api, dist
    from dcompress.errors import UsageError

    monkeypatch.setattr(dist, "world", lambda: 2)
    with pytest.raises(UsageError, match="--method herding does not support torchrun yet"):
        api.distill(str(shards["train"]), "herding", out=tmp_path / "o", ipc=1)
    assert not (tmp_path / "o").exists()


def test_experts_one_per_rank_same_buffer(four_classes, tmp_path):
    args = ["experts", four_classes, "--num-experts", "2", "--epochs", "2", "--set", "model=convnet_w16",
            "--device", "cpu", "--json"]
    one = dcompress(tmp_path, *args, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = dcompress(tmp_path, *args, "-o", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr
    report = one_json(two.stdout)
    assert report["trained"] == [0, 1] and report["experts"] == 2, report
    npys = sorted(p.name for p in (tmp_path / "one").glob("*.npy"))
    assert len(npys) == 2 and npys == sorted(p.name for p in (tmp_path / "two").glob("*.npy"))
    for n in npys:
        assert (tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes(), n


def test_evaluate_runs_spread_over_ranks_same_numbers(four_classes, dm_one, tmp_path):
    args = ["evaluate", dm_one, "--test", four_classes, "--train", four_classes, "--runs", "3",
            "--epochs", "2", "--model", "convnet_w16", "--json"]
    one = dcompress(tmp_path, *args)
    assert one.returncode == 0, one.stderr
    two = dcompress(tmp_path, *args, nproc=2)
    assert two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), one_json(two.stdout)
    assert a["compressed"] == b["compressed"] and a["random"] == b["random"], (a, b)
    assert len(a["compressed"]["runs"]) == 3


def test_dq_features_and_bins_split_same_selection(four_classes, tmp_path):
    """GraphCut bins per class split over ranks and merged (teacher features: 48 samples are one
    batch of 1024, so one rank computes them here; the split path is `test_helpers_...`)."""
    args = ["distill", four_classes, "--method", "dq", "--ipc", "2", "--bins", "2", "--keep-bins", "--labels", "hard",
            "--teacher-set", "model=convnet_w16", "--teacher-set", "epochs=1", "--shard-size", "3", "--device", "cpu",
            "--json"]
    one = dcompress(tmp_path, *args, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = dcompress(tmp_path, *args, "-o", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr
    assert_same_output(tmp_path / "one", tmp_path / "two", metrics=False)


HELPERS = r"""
import json, sys
import torch
from dcompress import dist
from dcompress.api import load_real
from dcompress.train.teacher import Teacher, _teacher_features
from dcompress.nets import build_net

dist.init()
r, w = dist.rank(), dist.world()
out = {}
# varying first dims, exact bytes, rank order
part = torch.arange(r * 10, r * 10 + 2 + r, dtype=torch.float64) / 3
out["gather"] = dist.all_gather_cat(part).tolist()
# one-process sum of per-class terms, in class order
terms = [torch.tensor(v, dtype=torch.float32) for v in ([0.1, 1e8] if r == 0 else [0.3, -1e8, 0.7])]
out["sum"] = dist.gather_sum(terms)
# rows of a state: gather then take gives back this rank's rows
shard = dist.RowShard(0 if r == 0 else 2, 2 if r == 0 else 5, 5)
mine = {"images": torch.full((shard.hi - shard.lo, 2), float(r)), "opt": {"state": {0: {"m": torch.ones(shard.hi - shard.lo)}}}}
full = shard.gather(mine)
out["rows"] = full["images"][:, 0].tolist()
out["take_ok"] = bool(torch.equal(shard.take(full)["images"], mine["images"]))
out["runs"] = dist.gather_runs({i: i * i for i in dist.spread(5)}, 5)
# teacher features in whole batches per rank (batch 8 over 48 samples)
real = load_real(sys.argv[1])
net = build_net("convnet_w16", 1, real.num_classes, (28, 28), generator=torch.Generator().manual_seed(0))
t = Teacher(net.eval(), {})
feats = _teacher_features(t, real, torch.device("cpu"), batch_size=8)
torch.save(feats, sys.argv[2] + f".{w}.pt")
if dist.is_main():
    print(json.dumps(out))
"""


def test_helpers_and_split_teacher_features(four_classes, tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(HELPERS)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    two = subprocess.run([*launch, four_classes, tmp_path / "feats"], env=env(tmp_path), capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    out = one_json(two.stdout)
    assert out["gather"] == (torch_list := [x / 3 for x in (0.0, 1.0, 10.0, 11.0, 12.0)]), (out, torch_list)
    total = np.float32(0)
    for v in (0.1, 1e8, 0.3, -1e8, 0.7):
        total = np.float32(total + np.float32(v))
    assert out["sum"] == float(total)
    assert out["rows"] == [0.0, 0.0, 1.0, 1.0, 1.0] and out["take_ok"]
    assert out["runs"] == [0, 1, 4, 9, 16]
    one = subprocess.run([sys.executable, str(script), four_classes, tmp_path / "feats"], capture_output=True,
                         text=True, env=env(tmp_path), timeout=300)
    assert one.returncode == 0, one.stderr
    import torch

    assert torch.equal(torch.load(f"{tmp_path / 'feats'}.1.pt"), torch.load(f"{tmp_path / 'feats'}.2.pt"))
