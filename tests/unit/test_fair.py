"""Pieces of the fair protocol (train/fair.py): config checks, the validation split, the cached
full-data accuracy."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_real
from dcompress.config import resolve_config
from dcompress.errors import UsageError
from dcompress.train.fair import FairConfig, FullDataConfig, full_data_accuracy, parse_grid, split_validation


def test_config_checks_every_grid_value():
    assert resolve_config(FairConfig, sets=["lr_grid=0.01,0.1"]).lr_grid == (0.01, 0.1)
    with pytest.raises(UsageError, match="lr_grid"):
        FairConfig(lr_grid=(0.01, -0.1))
    with pytest.raises(UsageError, match="lr_grid"):
        FairConfig(lr_grid=())
    with pytest.raises(UsageError, match="lrs_weight"):
        FairConfig(lrs_weight=2.0)
    with pytest.raises(UsageError, match="dsa_strategy"):
        FairConfig(dsa_strategy="nope")
    assert parse_grid("0.001, 0.01") == (0.001, 0.01)
    for bad in ("", "a,b", "0.1,0", "inf"):
        with pytest.raises(UsageError, match="--lr-grid"):
            parse_grid(bad)


def test_validation_split_is_disjoint_bounded_and_seeded():
    real = tiny_real()                                   # 10 images in each of 3 classes
    val, pools = split_validation(real, per_class=3, seed=0)
    assert val.numel() == 9 and [p.numel() for p in pools] == [7, 7, 7]
    rest = torch.cat(pools)
    assert set(val.tolist()).isdisjoint(rest.tolist()) and len(set(val.tolist()) | set(rest.tolist())) == 30
    assert all(int(real.labels[p].unique().numel()) == 1 for p in pools)
    big, _ = split_validation(real, per_class=50, seed=0)
    assert big.numel() == 15                            # at most half of each class
    assert torch.equal(split_validation(real, 3, seed=0)[0], val)
    assert not torch.equal(split_validation(real, 3, seed=1)[0], val)


def _full(real, pools, cfg, tmp_path, monkeypatch, seed=0):
    monkeypatch.setenv("DCOMPRESS_CACHE", str(tmp_path))
    x = real.get(torch.arange(len(real)))
    return full_data_accuracy(real, pools, (x, real.labels), model="convnet_w8", cfg=cfg, seed=seed,
                              device=torch.device("cpu"), test_key={"fingerprint": "t", "samples": 30},
                              val_per_class=3)


def test_full_data_accuracy_is_cached_per_recipe(tmp_path, monkeypatch):
    real = tiny_real()
    _, pools = split_validation(real, 3, seed=0)
    cfg = FullDataConfig(epochs=1, batch_size=8)
    first = _full(real, pools, cfg, tmp_path, monkeypatch)
    assert first["cached"] is False and first["samples"] == 21 and 0 <= first["accuracy"] <= 1
    again = _full(real, pools, cfg, tmp_path, monkeypatch)
    assert again["cached"] is True and again["accuracy"] == first["accuracy"] and again["path"] == first["path"]
    other = _full(real, pools, FullDataConfig(epochs=2, batch_size=8), tmp_path, monkeypatch)
    assert other["cached"] is False and other["path"] != first["path"]
    assert _full(real, pools, cfg, tmp_path, monkeypatch, seed=1)["cached"] is False
    # a damaged or foreign entry is measured again, with the same result (seeded training)
    path = tmp_path / "full-data" / first["path"].rsplit("/", 1)[1]
    path.write_text("{trunc")
    redo = _full(real, pools, cfg, tmp_path, monkeypatch)
    assert redo["cached"] is False and redo["accuracy"] == first["accuracy"]
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "key": {**rec["key"], "model": "lenet"}}))
    assert _full(real, pools, cfg, tmp_path, monkeypatch)["cached"] is False
    assert not list((tmp_path / "full-data").glob("*.tmp*"))
