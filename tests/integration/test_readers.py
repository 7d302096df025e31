"""Outputs every reader opens unchanged: timm, Hugging Face datasets, wids, webdataset, dcompress;
small outputs in enough shards for a DataLoader's workers, and the card that says which reader
sees what; plus the files beside the shards (grid, loss curve, metrics) and their determinism."""
from __future__ import annotations

import dataclasses
import json

import pytest

from dcompress import api
from dcompress.report import figures
from dcompress.io.figures import font, grid_layout
from dcompress.io.manifest import verify
from dcompress.io.metrics import MetricsLog, read_metrics
from dcompress.io.urls import resolve_urls
from dcompress.io.loader import load
from dcompress.io.output import MIN_SHARDS, output_shard_size
from dcompress.io.cards import dataset_card
from dcompress.io.manifest import read_compressed

TINY_DM = ["model=convnet_w16", "batch_real=8", "iterations=3"]
AUX = ("README.md", "_info.json", "grid.png")
SHARDS6 = [f"data-{k:06d}.tar" for k in range(6)]   # random, IPC 2, 3 classes: one sample per shard


@pytest.fixture(scope="module")
def random_out(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("readers") / "rnd"
    api.distill(None, "random", out=out, ipc=2, labels="hard", device="cpu", real=real)
    return out


@pytest.fixture(scope="module")
def dm_run(real, tmp_path_factory):
    """A synthesis output and the metrics of its real event stream (api's `log=`)."""
    out = tmp_path_factory.mktemp("readers") / "dm"
    events = MetricsLog()
    api.distill(None, "dm", out=out, ipc=1, sets=TINY_DM, device="cpu", real=real, log=events)
    return out, events.rows()


def test_timm_reads_the_shards(random_out):
    timm_data = pytest.importorskip("timm.data")
    ds = timm_data.create_dataset("wds/rnd", root=str(random_out), split="train")
    items = list(ds)
    assert len(ds) == 6 and len(items) == 6
    assert sorted(t for _, t in items) == [0, 0, 1, 1, 2, 2]
    assert all(im.size == (28, 28) and im.mode == "RGB" for im, _ in items)
    info = json.loads((random_out / "_info.json").read_text())
    assert info["splits"]["train"] == {"name": "train", "num_samples": 6, "filenames": SHARDS6,
                                       "shard_lengths": [1] * 6}


@pytest.mark.parametrize("which", ["random", "dm"])
def test_hf_datasets_loads_the_shards_not_the_manifest(which, random_out, dm_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    out = random_out if which == "random" else dm_run[0]
    n = 6 if which == "random" else 3
    d = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf" / "cache"))
    assert d.num_rows == n
    assert {"png", "cls"} <= set(d.column_names)
    assert not {"logits.npy", "json"} & set(d.column_names)       # hard labels: `.cls` alone, no per-sample json
    assert ("npy" in d.column_names) == (which == "dm")
    row = d[0]
    assert row["png"].size == (28, 28) and row["cls"] == 0


def test_auxiliary_files_are_not_taken_for_shards(random_out):
    assert all((random_out / f).is_file() for f in AUX)
    m = json.loads((random_out / "manifest.json").read_text())
    assert [r["url"] for r in m["shardlist"]] == SHARDS6
    files = m["dcompress"]["files"]
    assert {"timm_info": "_info.json", "card": "README.md", "grid": "grid.png"}.items() <= files.items()
    assert "loss_curve" not in files           # a selection method has no loss curve
    assert [p.rsplit("/", 1)[-1] for p in resolve_urls(str(random_out)).urls] == SHARDS6
    assert verify(random_out)["samples"] == 6 and len(load(random_out)) == 6
    wids = pytest.importorskip("wids")
    assert len(wids.ShardListDataset(str(random_out / "manifest.json"))) == 6
    card = (random_out / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: default\n") and 'path: "data-*.tar"' in card


def test_same_seed_gives_identical_shards_cards_and_grid(real, random_out, tmp_path):
    again = tmp_path / "rnd"                   # same folder name: the manifest name is in the cards
    api.distill(None, "random", out=again, ipc=2, labels="hard", device="cpu", real=real)
    for f in (*SHARDS6, *AUX):
        assert (again / f).read_bytes() == (random_out / f).read_bytes(), f


def test_output_shard_size_rule():
    """`--shard-size` is the upper bound; a set of n >= MIN_SHARDS samples gets MIN_SHARDS to
    2 * MIN_SHARDS - 1 shards, a smaller one a shard per sample."""
    assert MIN_SHARDS == 8
    assert [output_shard_size(n, 1000) for n in (0, 1, 6, 8, 15, 16, 21, 100)] == [1, 1, 1, 1, 1, 2, 2, 12]
    assert output_shard_size(100_000, 1000) == 1000 and output_shard_size(100, 3) == 3
    for n in range(8, 400):
        assert 8 <= -(-n // output_shard_size(n, 1000)) <= 15


def test_small_output_reads_through_a_dataloader_with_workers(real, tmp_path):
    """21 samples (under the default --shard-size 1000) are 11 shards of at most 2: a plain
    webdataset pipeline with num_workers=2 yields every sample once (one shard used to fail it)."""
    import torch
    import webdataset as wds

    out = tmp_path / "small"
    api.distill(None, "random", out=out, ipc=7, labels="hard", device="cpu", real=real)
    m = json.loads((out / "manifest.json").read_text())
    assert [r["nsamples"] for r in m["shardlist"]] == [2] * 10 + [1]
    urls = str(out / m["dcompress"]["urls"])
    assert urls.endswith("data-{000000..000010}.tar")
    ds = wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "cls")
    keys = [k for k, _ in torch.utils.data.DataLoader(ds, num_workers=2, batch_size=None)]
    assert len(keys) == 21 and sorted(keys) == sorted(load(out).keys)
    assert verify(out)["ok"]


def test_card_says_which_reader_sees_the_soft_labels(random_out):
    card = (random_out / "README.md").read_text()
    reading = card[card.index("## Reading it"):card.index("## Classes")]
    for reader in ("dcompress.load", "`webdataset`", "`wids`", "timm", "Hugging Face `datasets`"):
        assert reader in reading, reader
    assert "image + `cls` only: the soft labels are ignored" in reading and "`logits.npy`" not in reading
    assert "num_workers" in reading and "at most 6 workers" in reading and "resampled=True" in reading
    assert "in 6 shards" in card and "no soft labels are stored" in card
    # the card's webdataset example runs (a hard-label output: the class is `cls`)
    code = reading[reading.index("import io, numpy"):reading.index("import timm.data")]
    env: dict = {}
    exec(code.replace('"OUT/', f'"{random_out}/'), env)
    assert env["cls"] in (0, 1, 2)
    _, rows, block = read_compressed(random_out / "manifest.json")
    soft = dataclasses.replace(block, labels=dataclasses.replace(block.labels, kind="teacher", soft="logits.npy"))
    soft_card = dataset_card("x", soft, "data-*.tar", files=[], num_shards=6)
    assert "soft labels from `logits.npy`" in soft_card and 's["logits.npy"]' in soft_card
    # with --label-topk the card names `topk.npy` and expands it
    block = dataclasses.replace(block, labels=dataclasses.replace(block.labels, soft="topk.npy", topk=2))
    topk_card = dataset_card("x", block, "data-*.tar", files=[], num_shards=6)
    assert "`topk.npy`" in topk_card and "dcompress.io.topk.expand(rec, 3, 2)" in topk_card
    assert "logits.npy" not in topk_card


def test_grid_size_and_inspect_redraws_into_the_output(random_out, tmp_path):
    from PIL import Image

    before = (random_out / "grid.png").read_bytes()
    title = "random, IPC 2, hard labels, 6 images"
    with Image.open(random_out / "grid.png") as im:
        assert im.size == grid_layout(2, 28, 28, ["0", "1", "2"], title, font())["size"]
    rep = figures(random_out)                  # default: into OUT, same bytes, verify unaffected
    assert rep == {"grid": str(random_out / "grid.png"), "loss_curve": None}
    assert (random_out / "grid.png").read_bytes() == before and verify(random_out)["ok"]
    rep = figures(random_out, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes() == before


def test_metrics_of_a_synthesis_run(dm_run, tmp_path):
    _, rows = dm_run
    its = [r for r in rows if r["event"] == "iteration"]
    assert [r["iteration"] for r in its] == [1, 2, 3]
    assert all(r["loss"] is not None and r["loss"] >= 0 for r in its)
    secs = [r["seconds"] for r in rows]
    assert secs == sorted(secs)


def test_distill_writes_metrics_and_loss_curve_into_the_output(dm_run, tmp_path):
    out, _ = dm_run
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows if r["event"] == "iteration"] == [1, 2, 3]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    files = json.loads((out / "manifest.json").read_text())["dcompress"]["files"]
    assert files["metrics"] == "metrics.jsonl" and files["loss_curve"] == "loss.png"
    assert figures(out, tmp_path / "g.png")["loss_curve"] == str(tmp_path / "g-loss.png")
