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
import torch

from conftest import make_images, write_idx
from tests.conftest import frontier_without_times

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
    the 8 shards (8 samples: one each, under --shard-size 3) are written by ranks 0, 1, 0, 1, ..."""
    two = dcompress(tmp_path, "distill", four_classes, *DM, "-o", tmp_path / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    report = one_json(two.stdout)                      # rank 0's report only
    assert report["status"] == "ok" and report["samples"] == 8 and report["shards"] == 8
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


@pytest.mark.parametrize("method", ["dm", "dsa"])
def test_more_ranks_than_classes_split_image_slots(method, tmp_path):
    """3 ranks, 2 classes x 3 slots: rank 1 holds one slot of each class. DM: the class means
    come from an all-reduce of embedding sums; DSA: the class gradients (synthetic and real)
    from an all-reduce of their parts (slots and real-batch blocks). The one-process set up to
    rounding, with the rows gathered for a checkpoint every 2 iterations (DSA: and all-gathered
    for the inner loop)."""
    from dcompress.io.sources import make_shards

    x, y = make_images(12, classes=2)
    write_idx(tmp_path / "idx", "train", x, y)
    make_shards(tmp_path / "idx", tmp_path / "train", fmt="idx", split="train", shard_size=10)
    args = ["distill", tmp_path / "train", "--method", method, "--ipc", "3", "--set", "iterations=4", "--set",
            "model=convnet_w16", "--set", "batch_real=8", "--shard-size", "4", "--ckpt-every", "2", "--device", "cpu",
            "--json"]
    if method == "dsa":
        args += ["--set", "outer_loop=2", "--set", "inner_loop=1", "--set", "batch_train=4"]
    one = dcompress(tmp_path, *args, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    three = dcompress(tmp_path, *args, "-o", tmp_path / "three", nproc=3)
    assert three.returncode == 0, three.stderr
    info = json.loads((tmp_path / "three" / "manifest.json").read_text())["dcompress"]["info"]
    assert info["split"] == "image slots", info
    assert_close_output(tmp_path / "one", tmp_path / "three")


def assert_close_output(a: Path, b: Path, logits: bool = False) -> None:
    """Unrolled methods (data-parallel, sums over ranks): the same set up to float rounding — stored
    pixels at most one 8-bit step apart and rarely that, the learned lr, the losses and (DATM) the learned logits to
    ~1e-5 relative; same names, classes and keys."""
    from dcompress.io.loader import load

    x, y = load(a), load(b)
    assert x.keys == y.keys and torch.equal(x.labels, y.labels)
    step = torch.tensor(x.std).view(1, -1, 1, 1) / 255
    assert ((x.images - y.images).abs() <= step * 1.01).all()
    assert (x.images - y.images).abs().mean() < step.min() / 10    # rare rounding flips, not another set
    if x.lr is not None or y.lr is not None:
        assert x.lr == pytest.approx(y.lr, rel=1e-4)
    if logits:
        assert torch.allclose(x.logits, y.logits, rtol=1e-4, atol=1e-5)
    curves = [[json.loads(ln)["loss"] for ln in (d / "metrics.jsonl").open() if json.loads(ln)["event"] == "iteration"]
              for d in (a, b)]
    assert curves[0] and curves[0] == pytest.approx(curves[1], rel=1e-4)


@pytest.fixture(scope="module")
def experts4(four_classes, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("experts4")
    r = dcompress(tmp, "experts", four_classes, "--num-experts", "1", "--epochs", "3", "--set", "model=convnet_w16",
                  "--device", "cpu", "-o", tmp / "buf", "--json")
    assert r.returncode == 0, r.stderr
    return tmp / "buf"


@pytest.mark.parametrize("method", ["mtt", "datm"])
def test_trajectory_matching_batch_split_equals_one_process(method, four_classes, experts4, tmp_path):
    """MTT/DATM: each inner batch split over ranks (5 of 8 images a step: shares of 2 and 3, then
    of 1 and 2), gradients summed: the one-process result up to rounding."""
    args = ["distill", four_classes, "--method", method, "--ipc", "2", "--experts", experts4, "--set", "iterations=3",
            "--set", "syn_steps=3", "--set", "expert_epochs=1", "--set", "max_start_epoch=1", "--set", "batch_syn=5",
            "--set", "lr_img=100", "--shard-size", "3", "--device", "cpu", "--json"]
    if method == "datm":
        args += ["--set", "current_max_start_epoch=1", "--set", "min_start_epoch=0"]
    one = dcompress(tmp_path, *args, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = dcompress(tmp_path, *args, "-o", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr
    report = one_json(two.stdout)
    assert report["status"] == "ok", report
    info = json.loads((tmp_path / "two" / "manifest.json").read_text())["dcompress"]["info"]
    assert info["memory"] == "constant" and info["memory_choice"] == "torchrun", info
    assert_close_output(tmp_path / "one", tmp_path / "two", logits=method == "datm")


def test_dd_steps_and_real_batch_split_equals_one_process(four_classes, tmp_path):
    """DD: each step's synthetic batch (4 images) and the real batch (9) split over ranks."""
    args = ["distill", four_classes, "--method", "dd", "--ipc", "2", "--set", "iterations=3", "--set", "batch_real=9",
            "--set", "distill_epochs=2", "--shard-size", "3", "--device", "cpu", "--json"]
    one = dcompress(tmp_path, *args, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = dcompress(tmp_path, *args, "-o", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr
    assert_close_output(tmp_path / "one", tmp_path / "two")
    from dcompress.io.loader import load

    lrs = [load(tmp_path / d).lrs for d in ("one", "two")]
    assert lrs[0] and lrs[0] == pytest.approx(lrs[1], rel=1e-4)


def test_unrolled_methods_refuse_batchnorm_networks_under_torchrun(four_classes, tmp_path):
    r = dcompress(tmp_path, "distill", four_classes, "--method", "dd", "--ipc", "2", "--set", "model=convnetbn_w16",
                  "--set", "iterations=1", "--device", "cpu", "-o", tmp_path / "o", "--json", "--nproc", "2")
    assert r.returncode == 2, r.stderr
    assert "BatchNorm" in one_json(r.stdout)["error"]
    assert not (tmp_path / "o").exists()


def test_teacher_trains_data_parallel_equal_to_one_process(four_classes, tmp_path):
    """`dcompress teacher --nproc 2`: each batch (10, last 8) split over the ranks, gradients
    summed; the one-process weights up to rounding; rank 0 writes; a BN teacher is refused."""
    args = ["teacher", four_classes, "--model", "convnet_w16", "--epochs", "2", "--set", "batch_size=10",
            "--device", "cpu", "--json"]
    one = dcompress(tmp_path, *args, "-o", tmp_path / "one.pt", "--cache-dir", tmp_path / "c1")
    assert one.returncode == 0, one.stderr
    two = dcompress(tmp_path, *args, "-o", tmp_path / "two.pt", "--cache-dir", tmp_path / "c2", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    report = one_json(two.stdout)
    assert report["status"] == "ok" and report["source"] == "trained", report
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    again = dcompress(tmp_path, *args, "-o", tmp_path / "two.pt", "--cache-dir", tmp_path / "c2", "--nproc", "2")
    assert again.returncode == 0 and one_json(again.stdout)["up_to_date"] is True, again.stderr
    bn = dcompress(tmp_path, *args[:-1], "--bn", "--json", "-o", tmp_path / "bn.pt", "--cache-dir", tmp_path / "c3",
                   "--nproc", "2")
    assert bn.returncode == 2 and "BatchNorm" in one_json(bn.stdout)["error"], bn.stderr
    assert not (tmp_path / "bn.pt").exists()


UNROLL = r"""
import json, sys
import torch
from dcompress import dist
from dcompress.methods.mtt import draw_plan, trajectory_loss_fns
from dcompress.nets import build_net
from dcompress.nets.functional import flat_params
from dcompress.train.unroll import unroll

dist.init()
bp = dist.BatchParallel()
net = build_net("convnet_w16", 1, 4, (12, 12), generator=torch.Generator().manual_seed(0))
theta0 = flat_params(net).detach()
target = theta0 + 0.01 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(1))
images = torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
labels = torch.arange(4).repeat_interleave(2)
u = torch.zeros((), requires_grad=True)
out = {}
for mode in ("full", "constant", "tesla"):
    # minibatches of 3, 3, 2 images: with 3 ranks one block of the last is empty
    plan = draw_plan(8, 3, 4, "color_crop_cutout_flip_scale_rotate", (1, 12, 12), torch.Generator().manual_seed(3),
                     torch.device("cpu"))
    inner, outer = trajectory_loss_fns(net, theta0, target, images, labels, plan, False, bp)
    r = unroll(inner, lambda i: 0.01 * torch.exp(u), theta0, 4, outer, [images, u], mode=mode, parallel=bp)
    out[mode] = {"loss": r.loss, "images": r.grads[0].flatten().tolist(), "lr": float(r.grads[1]),
                 "inner": r.info["inner_losses"], "mode": r.info["mode"]}
if dist.is_main():
    print(json.dumps(out))
dist.finish()
"""


@pytest.mark.parametrize("nproc", [2, 3])
def test_unroll_batch_split_gradients_equal_one_process(nproc, tmp_path):
    """`train.unroll` with each minibatch split over ranks: loss, inner losses and the gradients of
    images and lr equal one process to float rounding, in all three memory modes."""
    script = tmp_path / "unroll.py"
    script.write_text(UNROLL)
    one = subprocess.run([sys.executable, str(script)], env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), str(script)]
    many = subprocess.run(launch, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert many.returncode == 0, many.stderr
    a, b = json.loads(one.stdout), one_json(many.stdout)
    for mode in ("full", "constant", "tesla"):
        x, y = a[mode], b[mode]
        assert y["mode"] == ("constant" if mode == "full" else mode)
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6)
        assert y["inner"] == pytest.approx(x["inner"], rel=1e-6)
        assert y["lr"] == pytest.approx(x["lr"], rel=1e-5) and x["lr"] != 0
        gx, gy = np.array(x["images"]), np.array(y["images"])
        assert np.abs(gx - gy).max() <= 1e-5 * np.abs(gx).max() and np.abs(gx).max() > 0


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
dist.finish()
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


# ------------------------------------------------------------------------------------------------
# frontier: the points spread over the ranks, (labels, budget) groups each on one rank

FRONTIER = ["--methods", "random,herding", "--budgets", "40KB,100KB", "--labels", "hard", "--epochs", "1",
            "--runs", "2", "--lr-grid", "0.01", "--val-per-class", "2", "--full-epochs", "1", "--test-limit", "12",
            "--device", "cpu", "--json"]


def frontier_args(shards, out: Path, *extra) -> list:
    return ["frontier", shards["train"], "--test", shards["test"], "-o", out, *FRONTIER, *extra]


timeless = frontier_without_times


def assert_same_frontier(a: Path, b: Path) -> None:
    """frontier.json but for seconds, frontier.png byte for byte, frontier.csv but for its
    seconds columns, each point's output (shards, figures, manifest but for timings)."""
    import csv

    assert timeless(json.loads((a / "frontier.json").read_text())) == \
        timeless(json.loads((b / "frontier.json").read_text()))
    assert (a / "frontier.png").read_bytes() == (b / "frontier.png").read_bytes()
    rows = [[{k: v for k, v in row.items() if not k.endswith("_s") and "seconds" not in k}
             for row in csv.DictReader((d / "frontier.csv").open())] for d in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) == 4
    assert sorted(p.name for p in (a / "points").iterdir()) == sorted(p.name for p in (b / "points").iterdir())
    for point in (a / "points").iterdir():
        assert_same_output(point, b / "points" / point.name, metrics=False)
    sides = sorted(p.name for p in (a / "random").iterdir())
    assert sides == sorted(p.name for p in (b / "random").iterdir()) and len(sides) == 2
    for n in sides:
        assert {k: v for k, v in json.loads((a / "random" / n).read_text()).items() if k != "seconds"} == \
            {k: v for k, v in json.loads((b / "random" / n).read_text()).items() if k != "seconds"}
    assert not (b / "ranks").exists()


@pytest.fixture(scope="module")
def frontier_one(shards, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("frontier-one")
    r = dcompress(tmp, *frontier_args(shards, tmp / "report"))
    assert r.returncode == 0, r.stderr
    return {"out": tmp / "report", "report": json.loads(r.stdout)}


def test_frontier_two_ranks_same_report_as_one_process(shards, frontier_one, tmp_path):
    """2 methods x 2 budgets under plain torchrun: each rank runs one budget's two points (the
    second reusing the first's random side); rank 0 merges rank 1's and writes the report."""
    two = dcompress(tmp_path, *frontier_args(shards, tmp_path / "report"), nproc=2)
    assert two.returncode == 0, two.stderr
    report = one_json(two.stdout)                      # rank 0's report only
    assert report["status"] == "ok" and report["counters"] == frontier_one["report"]["counters"] == {
        "points_run": 4, "points_kept": 0, "points_failed": 0, "random_sides_trained": 2, "random_sides_reused": 2}
    assert timeless(report) == timeless(frontier_one["report"]) | {"out": str(tmp_path / "report")}
    assert_same_frontier(frontier_one["out"], tmp_path / "report")


def test_frontier_rank_killed_then_rerun_keeps_its_points(shards, frontier_one, tmp_path):
    """Rank 1 SIGKILLed after its first point: torchrun stops rank 0, `--nproc` exits 137; the
    point rank 1 finished is in its rank file, and the rerun keeps it and ends with the report."""
    out = tmp_path / "report"
    r = dcompress(tmp_path, *frontier_args(shards, out), "--nproc", "2", DCOMPRESS_CRASH_AT="frontier.point:1",
                  DCOMPRESS_CRASH_RANK="1")
    assert r.returncode == 137, r.stderr
    part = json.loads((out / "ranks" / "1.json").read_text())
    assert [p["status"] for p in part["points"]] == ["ok"] and not part["done"]
    assert json.loads((out / "frontier.json").read_text())["status"] == "running"
    again = dcompress(tmp_path, *frontier_args(shards, out), "--nproc", "2")
    assert again.returncode == 0, again.stderr
    counters = one_json(again.stdout)["counters"]
    assert counters["points_kept"] >= 1 and counters["points_kept"] + counters["points_run"] == 4, counters
    assert_same_frontier(frontier_one["out"], out)


def test_frontier_failed_point_is_recorded_and_the_other_rank_goes_on(shards, tmp_path):
    """A budget below one image per class fails its point (recorded, exit 1); the other
    budget's point, on the other rank, finishes."""
    r = dcompress(tmp_path, "frontier", shards["train"], "--test", shards["test"], "-o", tmp_path / "report",
                  *FRONTIER, "--methods", "random", "--budgets", "1KB,40KB", "--nproc", "2")
    assert r.returncode == 1, r.stderr
    rep = one_json(r.stdout)
    bad, good = rep["points"]
    assert rep["status"] == "incomplete" and bad["status"] == "error" and bad["exit_code"] == 2
    assert good["status"] == "ok" and "below one image per class" in bad["error"]
    assert "rank 1: failed: --budget 1KB" in r.stderr or "rank 1: IPC" in r.stderr, r.stderr   # rank 0 says it
    assert "Traceback" not in r.stderr


def test_frontier_fatal_error_on_one_rank_stops_the_job_with_its_code(shards, frontier_one, tmp_path):
    """Rank 1 cannot write its rank file (a file named `ranks` is in the way): it reports the
    error (exit 5, one JSON object naming rank 1), torchrun stops rank 0, the job exits 5."""
    out = tmp_path / "report"
    out.mkdir()
    state = json.loads((frontier_one["out"] / "frontier.json").read_text())
    (out / "frontier.json").write_text(json.dumps({**state, "status": "running", "points": []}))
    (out / "ranks").write_text("in the way")
    r = dcompress(tmp_path, *frontier_args(shards, out), "--nproc", "2")
    assert r.returncode == 5, r.stderr
    obj = one_json(r.stdout)
    assert obj["status"] == "error" and obj["exit_code"] == 5 and obj["rank"] == 1, obj
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr, r.stderr
