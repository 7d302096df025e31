"""What an outside reader loads (train/outside_reader.py): `load(images="member")` is the image
member decoded as PIL and webdataset decode it; `evaluate` also trains a synthesis set's member
form (same lr, inits and seeds as the exact side) and says when a set has none; random subsets
of a lossy set go through the same format."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcompress import api
from dcompress.cli import app
from dcompress.errors import UsageError
from dcompress.io.imageformat import ImageFormat
from dcompress.io.loader import load
from dcompress.io.manifest import read_manifest, shard_paths
from dcompress.train.evaluate import evaluate
from dcompress.train.fair import FairConfig, FullDataConfig
from dcompress.train.outside_reader import random_pixels
from dcompress.train.random_sides import side_key

TINY_DM = ["model=convnet_w16", "batch_real=8", "iterations=3"]
FAST = dict(runs=2, epochs=1, test_limit=12, random_baseline=False)


@pytest.fixture(scope="module")
def outs(real, tmp_path_factory):
    base = tmp_path_factory.mktemp("reader")
    api.distill(None, "dm", out=base / "dm", ipc=1, sets=TINY_DM, device="cpu", real=real)
    for fmt in ("png", "jpeg:50"):
        api.distill(None, "random", out=base / fmt.replace(":", ""), ipc=2, labels="hard", device="cpu", real=real,
                    image_format=fmt)
    return {"dm": base / "dm", "png": base / "png", "jpeg": base / "jpeg50"}


@pytest.fixture(scope="module")
def test_real(shards):
    return api.load_real(str(shards["test"]))


def members(out) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} of every shard, read with tarfile (no dcompress code)."""
    found: dict[str, dict[str, bytes]] = {}
    for url in shard_paths(out / "manifest.json", read_manifest(out / "manifest.json")):
        with tarfile.open(url) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                found.setdefault(key, {})[ext] = t.extractfile(m).read()
    return found


def normalised(u8: np.ndarray, ds) -> torch.Tensor:
    """uint8 [N, H, W] (gray) -> what a reader trains on: / 255, the manifest's mean/std."""
    return (torch.from_numpy(u8).float().unsqueeze(1) / 255.0 - ds.mean[0]) / ds.std[0]


def test_member_form_is_the_png_an_outside_reader_decodes(outs):
    from PIL import Image
    import webdataset as wds

    exact, member = load(outs["dm"]), load(outs["dm"], images="member")
    assert (exact.image_source, member.image_source, member.image_member) == ("npy", "png", "png")
    by_key = members(outs["dm"])
    assert exact.keys == member.keys == sorted(by_key)
    # default unchanged: the exact .npy tensors
    npy = np.stack([np.load(io.BytesIO(by_key[k]["npy"])) for k in exact.keys])
    assert torch.equal(exact.images, torch.from_numpy(npy))
    # member: the .png as PIL decodes it, and as a webdataset pipeline decodes it
    pil = np.stack([np.asarray(Image.open(io.BytesIO(by_key[k]["png"]))) for k in exact.keys])
    assert torch.allclose(member.images, normalised(pil, member), atol=1e-6)
    urls = shard_paths(outs["dm"] / "manifest.json", read_manifest(outs["dm"] / "manifest.json"))
    piped = dict((s["__key__"], s["png"]) for s in wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    assert np.array_equal(np.stack([piped[k] for k in exact.keys]), pil)
    assert not torch.equal(exact.images, member.images)                     # optimised pixels left the grid
    assert torch.equal(member.labels, exact.labels) and torch.equal(member.logits, exact.logits)
    # a selection has no exact form: both forms are its image member
    sel = load(outs["jpeg"], images="member")
    assert sel.image_source == "jpg" and torch.equal(sel.images, load(outs["jpeg"]).images)
    with pytest.raises(UsageError, match="images must be one of exact, member"):
        load(outs["dm"], images="png")


def test_own_protocol_trains_the_member_form_with_the_same_seeds(outs, test_real):
    rep = evaluate(outs["dm"], test_real, **FAST)
    o = rep["outside_reader"]
    assert o["images"] == "png" and o["same_as_evaluated"] is False and o["differs_from_exact"] is True
    assert len(o["runs"]) == 2 and 0 < o["max_abs_diff"] <= 1 + 1e-6 and 0 <= o["pixels_out_of_range"] <= 1
    assert o["delta_vs_exact"] == round(o["mean"] - rep["compressed"]["mean"], 2)
    # the member form evaluated as a set of its own: the same networks, run by run
    as_set = evaluate(load(outs["dm"], images="member"), test_real, **FAST)
    assert as_set["compressed"]["runs"] == o["runs"] and as_set["protocol"]["lr_used"] == rep["protocol"]["lr_used"]
    assert as_set["outside_reader"] == {"images": "png", "same_as_evaluated": True}
    off = evaluate(outs["dm"], test_real, outside_reader=False, **FAST)
    assert off["outside_reader"]["trained"] is False and "mean" not in off["outside_reader"]
    assert off["compressed"] == rep["compressed"]


def test_fair_protocol_trains_the_member_form_at_the_sets_lr(outs, real, test_real):
    kw = dict(runs=2, epochs=1, test_limit=12, protocol="fair", fair=FairConfig(lr_grid=(0.01,), val_per_class=2,
                                                                                ars=False),
              full_data=FullDataConfig(epochs=1))
    rep = evaluate(outs["dm"], test_real, train=real, **kw)
    o = rep["outside_reader"]
    assert o["differs_from_exact"] and len(o["runs"]) == 2 and rep["random_images"] == "png"
    as_set = evaluate(load(outs["dm"], images="member"), test_real, train=real, **kw)
    assert as_set["compressed"]["runs"] == o["runs"] and as_set["outside_reader"]["same_as_evaluated"]


def test_random_side_of_a_jpeg_set_trains_on_reencoded_pixels(outs, real):
    jpeg, png = load(outs["jpeg"]), load(outs["png"])
    idx = torch.arange(6)
    raw = (real.get_u8(idx).float() / 255 - real.mean[0]) / real.std[0]
    assert torch.equal(random_pixels(png, real, idx), raw)
    x = random_pixels(jpeg, real, idx)
    assert not torch.equal(x, raw)
    redo = torch.from_numpy(ImageFormat("jpeg", 50).roundtrip(real.get_u8(idx).numpy()))
    assert torch.equal(x, (redo.float() / 255 - jpeg.mean[0]) / jpeg.std[0])
    kw = dict(train=real, test_key={}, counts=[2, 2, 2], recipe=png.protocol, grid=(0.01,), runs=1, seed=0,
              label="hard", aug=None, val_per_class=2, teacher_info=None, device="cpu")
    kp, kj = side_key(ds=png, **kw), side_key(ds=jpeg, **kw)
    assert "images" not in kp and kj["images"] == "jpeg:50" and {k: v for k, v in kj.items() if k != "images"} == kp


def test_cli_prints_the_outside_reader_and_the_random_format(outs, shards):
    runner = CliRunner()
    base = ["--test", str(shards["test"]), "--runs", "1", "--epochs", "1", "--test-limit", "12"]
    r = runner.invoke(app, ["evaluate", str(outs["dm"]), *base, "--no-random"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())                     # the console wraps long lines
    assert "outside reader (.png: webdataset, wids, timm, HF):" in text and "vs the exact .npy" in text
    r = runner.invoke(app, ["evaluate", str(outs["jpeg"]), *base, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["outside_reader"] == {"images": "jpg", "same_as_evaluated": True}
    assert rep["random_images"] == "jpeg:50" and rep["resumed_runs"]["outside_reader"] == 0


def test_frontier_csv_and_markdown_carry_the_outside_reader():
    from dcompress.io import frontier_report as fr

    acc = {"mean": 60.0, "std": 1.0, "runs": [59.0, 61.0]}
    point = {"name": "dm-1pct-hard", "method": "dm", "labels": "hard", "budget": "1%", "budget_bytes": 10,
             "bytes": 9, "fits": True, "ipc": 1, "samples": 3, "accuracy": acc, "status": "ok",
             "random": {**acc, "lr": 0.01}, "gain": 0.0, "ior": {"mean": 0.0, "std": 0.0}, "lr": 0.01,
             "seconds": {k: 1.0 for k in ("distill", "compressed", "random", "full_data", "total")},
             "outside_reader": {"images": "png", "same_as_evaluated": False, "differs_from_exact": True,
                                "pixels_out_of_range": 0.25, "max_abs_diff": 0.1, "mean": 55.5, "std": 2.0,
                                "runs": [53.5, 57.5], "delta_vs_exact": -4.5}}
    older = {**point, "name": "herding-1pct-hard", "method": "herding"}
    del older["outside_reader"]                           # a point of a report written before this column
    rows = fr.csv_text({"points": [point, older]}).splitlines()
    head = rows[0].split(",")
    assert rows[1].split(",")[head.index("outside_reader_mean")] == "55.5"
    assert rows[2].split(",")[head.index("outside_reader_mean")] == ""
