"""Expert trajectories: buffer format round trip, mmap reads, resumability, locks, manifest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dcompress.augment.dsa import DEFAULT_STRATEGY
from dcompress.errors import InputDataError, UsageError
from dcompress.nets import build_net
from dcompress.nets.functional import flat_params
from dcompress.train.buffer import ExpertBuffer
from dcompress.train.expert_locks import claim
from dcompress.train.experts import ExpertConfig, expert_seed, split_indices, train_experts
from dcompress.train.gsam import gsam_epoch
from dcompress.train.loop import train_epoch

CFG = ExpertConfig(model="convnet_w16", epochs=2)


@pytest.fixture(scope="module")
def buffer(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("buf") / "B"
    report = train_experts(real, out, num_experts=2, config=CFG)
    return out, report


def test_round_trip_and_manifest_fields(buffer, real):
    out, report = buffer
    assert report["status"] == "ok" and report["trained"] == [0, 1] and report["experts"] == 2
    buf = ExpertBuffer(out)
    P = flat_params(build_net("convnet_w16", 1, 3, (28, 28))).numel()
    assert buf.num_experts == 2 and buf.epochs == 2 and buf.param_count == P
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "dcompress-experts" and m["format_version"] == 1
    assert m["network"] == {"name": "convnet_w16", "channels": 1, "num_classes": 3, "im_size": [28, 28],
                            "param_count": buf.param_count}
    assert m["input"]["fingerprint"] == real.source["fingerprint"]
    assert m["normalization"] == {"mean": list(real.mean), "std": list(real.std)}
    assert m["training"]["epochs"] == 2 and m["training"]["lr_teacher"] == 0.01
    assert m["training"]["optimizer"] == "sgd" and m["training"]["momentum"] == 0.0
    assert m["experts"] == [0, 1] and m["split"]["holdout"] == 0.05
    side = buf.meta(1)
    assert side["seed"] == expert_seed(0, 1) and side["param_count"] == buf.param_count
    assert len(side["accuracy"]["heldout"]) == 2 and len(side["train_loss"]) == 2
    assert all(buf.verify(e) for e in range(2))
    arr = np.load(out / "expert-00000.npy", mmap_mode="r", allow_pickle=False)
    assert isinstance(arr, np.memmap) and arr.dtype == np.dtype("<f4") and arr.shape == (3, buf.param_count)
    assert not list(out.glob("*.lock")) and not list(out.glob("*.tmp-*"))


def test_mmap_snapshots_equal_the_trained_parameters(buffer, real):
    out, _ = buffer
    buf = ExpertBuffer(out)
    # replay expert 1's training: same seed, data split and batches -> the same parameters
    g = torch.Generator().manual_seed(expert_seed(0, 1))
    net = build_net("convnet_w16", 1, 3, (28, 28), generator=g)
    assert torch.equal(buf.snapshot(1, 0), flat_params(net))
    train_idx, _ = split_indices(len(real), 0.05, 0)
    x, y = real.get(train_idx), real.labels[train_idx]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.0, weight_decay=0.0)
    for ep in range(2):
        train_epoch(net, opt, x, y, None, batch_size=256, generator=g, aug=DEFAULT_STRATEGY)
        assert torch.equal(buf.snapshot(1, ep + 1), flat_params(net))
    assert not torch.equal(buf.snapshot(0, 2), buf.snapshot(1, 2))  # different experts differ
    with pytest.raises(UsageError):
        buf.snapshot(0, 3)


def test_killed_run_resumes_with_the_missing_experts(real, tmp_path):
    out = tmp_path / "B"

    def die_in_expert_1(ev):
        if ev.get("event") == "expert_epoch" and ev["expert"] == 1:
            raise KeyboardInterrupt  # a kill in the middle of expert 1

    with pytest.raises(KeyboardInterrupt):
        train_experts(real, out, num_experts=3, config=CFG, log=die_in_expert_1)
    assert ExpertBuffer(out).ids == [0]
    assert not list(out.glob("expert-00001*"))  # no lock, no partial file left
    digest = ExpertBuffer(out).meta(0)["sha256"]
    report = train_experts(real, out, num_experts=3, config=CFG)
    assert report["skipped_complete"] == [0] and report["trained"] == [1, 2]
    buf = ExpertBuffer(out)
    assert buf.ids == [0, 1, 2] and buf.meta(0)["sha256"] == digest
    assert json.loads((out / "manifest.json").read_text())["experts"] == [0, 1, 2]


def test_a_live_lock_prevents_double_work_and_stale_locks_are_broken(real, tmp_path):
    out = tmp_path / "B"
    out.mkdir()
    held = claim(out, 0)  # this process "trains" expert 0
    assert held is not None and claim(out, 0) is None
    report = train_experts(real, out, num_experts=2, config=CFG)
    assert report["status"] == "incomplete" and report["busy"] == [0] and report["trained"] == [1]
    # the owner died: a lock of a dead pid on this host is stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": time.time()}))
    report = train_experts(real, out, num_experts=2, config=CFG)
    assert report["trained"] == [0] and report["busy"] == [] and ExpertBuffer(out).ids == [0, 1]


def test_lock_without_heartbeat_is_stale(tmp_path):
    lock = claim(tmp_path, 4)
    assert claim(tmp_path, 4, stale_after=3600) is None
    old = time.time() - 7200
    os.utime(lock, (old, old))
    assert claim(tmp_path, 4, stale_after=3600) == lock  # broken and re-claimed
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_different_settings_are_refused(buffer, real):
    out, _ = buffer
    with pytest.raises(UsageError, match="training"):
        train_experts(real, out, num_experts=2, config=ExpertConfig(model="convnet_w16", epochs=3))


def test_not_a_buffer(tmp_path):
    with pytest.raises(InputDataError):
        ExpertBuffer(tmp_path)


def test_gsam_with_zero_radius_is_plain_sgd(real):
    x, y = real.get(torch.arange(len(real))), real.labels
    nets = [build_net("convnet_w16", 1, 3, (28, 28), generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.01) for n in nets]
    train_epoch(nets[0], opts[0], x, y, None, batch_size=16, generator=torch.Generator().manual_seed(2))
    gsam_epoch(nets[1], opts[1], x, y, batch_size=16, generator=torch.Generator().manual_seed(2), aug=None,
               rho=0.0, alpha=0.3, adaptive=True)
    torch.testing.assert_close(flat_params(nets[0]), flat_params(nets[1]))


def test_ftd_experts_train(real, tmp_path):
    report = train_experts(real, tmp_path / "F", num_experts=1,
                           config=ExpertConfig(model="convnet_w16", epochs=1, optimizer="ftd"))
    buf = ExpertBuffer(tmp_path / "F")
    assert report["optimizer"] == "ftd" and buf.config["training"]["optimizer"] == "ftd"
    assert torch.isfinite(buf.snapshot(0, 1)).all() and not torch.equal(buf.snapshot(0, 0), buf.snapshot(0, 1))


@pytest.mark.slow  # two fresh interpreters importing torch: 10-30 s
def test_two_processes_fill_one_buffer_without_double_work(shards, tmp_path):
    out = tmp_path / "B"
    code = ("import json, sys; from dcompress.api import load_real; "
            "from dcompress.train.experts import ExpertConfig, train_experts; "
            "r = train_experts(load_real(sys.argv[1]), sys.argv[2], num_experts=4, "
            "config=ExpertConfig(model='convnet_w16', epochs=2)); print(json.dumps(r))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(shards["train"]), str(out)], stdout=subprocess.PIPE,
                              env=env, text=True) for _ in range(2)]
    reports = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    trained = sorted(i for r in reports for i in r["trained"])
    assert trained == [0, 1, 2, 3]  # every expert trained exactly once
    assert ExpertBuffer(out).ids == [0, 1, 2, 3] and all(ExpertBuffer(out).verify(e) for e in range(4))
