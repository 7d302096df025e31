"""DQ through the CLI on tiny shards: bins, sampling, --keep-bins/--from-bins, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcompress.cli import app
from dcompress.methods.dq import bin_quotas, sample_bins

runner = CliRunner()


def run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    return r, (json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None)


def sample_meta(out):
    """Each sample's provenance (provenance.jsonl), with its class read from its key."""
    rows = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    return [{**m, "class": int(m["key"][1:5])} for m in rows]


@pytest.mark.parametrize("target,sizes,expect", [(10, [3] * 10, [1] * 10), (1, [3] * 10, [1] + [0] * 9),
                                                 (7, [2, 2, 1], [2, 2, 1]), (4, [1, 5, 1], [1, 2, 1]),
                                                 (5, [1, 1, 9], [1, 1, 3])])
def test_bin_quotas_hit_target_within_bin_sizes(target, sizes, expect):
    q = bin_quotas(target, sizes)
    assert q == expect and sum(q) == min(target, sum(sizes)) and all(a <= b for a, b in zip(q, sizes))


def test_sample_bins_is_uniform_per_bin_and_deterministic():
    labels = torch.tensor([0] * 20 + [1] * 20)
    bins = np.tile(np.repeat(np.arange(4), 5), 2).astype(np.int32)
    a, ab = sample_bins(labels, bins, [8, 4], 4, torch.Generator().manual_seed(0))
    b, _ = sample_bins(labels, bins, [8, 4], 4, torch.Generator().manual_seed(0))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert ab == [0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3]
    assert sorted(bins[a[0].numpy()].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_dq_end_to_end_with_keep_and_from_bins(shards, tmp_path):
    out = tmp_path / "dq"
    r, rep = run("distill", shards["train"], "--method", "dq", "--ipc", "4", "--bins", "4", "--keep-bins", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    assert (out / "bins.npy").exists() and (out / "bins.json").exists()
    bins = np.load(out / "bins.npy")
    assert bins.shape == (36,) and set(bins.tolist()) == {0, 1, 2, 3}
    for c in range(3):  # every class split into 4 disjoint bins of 3
        assert np.bincount(bins[c * 12:(c + 1) * 12], minlength=4).tolist() == [3, 3, 3, 3]
    meta = sample_meta(out)
    assert sorted((m["class"], m["bin"]) for m in meta) == sorted((c, b) for c in range(3) for b in range(4))
    m = json.loads((out / "manifest.json").read_text())["dcompress"]
    assert m["info"]["bins"] == 4 and m["info"]["kernels"] == ["dense"] and m["extra_files"] == ["bins.json", "bins.npy",
                                                                                                 "provenance.jsonl"]
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    again = tmp_path / "dq2"
    r, rep = run("distill", shards["train"], "--method", "dq", "--ratio", "0.5", "--from-bins", out, "-o", again, "--json")
    assert r.exit_code == 0, r.output
    assert rep["samples"] == 18
    assert sorted(m["bin"] for m in sample_meta(again) if m["class"] == 0) == [0, 0, 1, 1, 2, 3]


def test_dq_with_user_features_and_its_bad_input(shards, tmp_path):
    good = tmp_path / "f.npy"
    np.save(good, np.random.default_rng(0).normal(size=(36, 8)).astype(np.float32))
    r, _ = run("distill", shards["train"], "--method", "dq", "--ipc", "2", "--bins", "2", "--features", good, "-o", tmp_path / "a", "--json")
    assert r.exit_code == 0, r.output
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((35, 8), dtype=np.float32))
    r, rep = run("distill", shards["train"], "--method", "dq", "--ipc", "2", "--features", rows, "-o", tmp_path / "b", "--json")
    assert r.exit_code == 4 and "expected [36, D]" in rep["error"] and "rows.npy" in rep["error"]
    nan = tmp_path / "nan.npy"
    arr = np.zeros((36, 8), dtype=np.float32)
    arr[5, 3] = np.nan
    np.save(nan, arr)
    r, rep = run("distill", shards["train"], "--method", "dq", "--ipc", "2", "--features", nan, "-o", tmp_path / "c", "--json")
    assert r.exit_code == 4 and "NaN" in rep["error"] and "row 5" in rep["error"]
    r, rep = run("distill", shards["train"], "--method", "dq", "--ipc", "2", "--bins", "13", "--features", good, "-o", tmp_path / "d", "--json")
    assert r.exit_code == 2 and "--bins 13 is larger than the smallest class" in rep["error"]


def test_dq_grad_features_dense(shards, tmp_path):
    r, _ = run("distill", shards["train"], "--method", "dq", "--ipc", "3", "--bins", "3", "--features", "grad", "-o", tmp_path / "g", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())["dcompress"]
    assert m["info"]["features"] == "grad"


def test_dq_sparse_path_clips_k_and_records_it(shards, tmp_path):
    # dense_max=4 forces the kNN graph on 12-image classes; k=50 >= class size is clipped
    r, _ = run("distill", shards["train"], "--method", "dq", "--ipc", "2", "--bins", "2", "--set", "dense_max=4",
               "--set", "k=50", "-o", tmp_path / "s", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "s" / "manifest.json").read_text())["dcompress"]["info"]
    assert info["kernels"] == ["knn"] and info["knn"][0]["k_clipped"] is True and info["knn"][0]["k"] == 11
