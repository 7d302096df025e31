"""Byte budgets (`distill --budget`), every byte of an output accounted for (no member that
carries nothing, the byte report), `--image-format`, and `evaluate`'s CI gates (exit 9)."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from typer.testing import CliRunner

import dcompress
from dcompress import api
from dcompress.api.budget import parse_budget
from dcompress.cli import app
from dcompress.errors import UsageError

runner = CliRunner()


def cli(*args):
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, (json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None)


def shards_on_disk(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("data-*.tar"))


def members(out: Path) -> list[str]:
    """The member extensions of every sample (tar order)."""
    names = []
    for p in sorted(out.glob("data-*.tar")):
        with tarfile.open(p) as tar:
            names += [m.name.split(".", 1)[1] for m in tar]
    return names


# ---------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("text,expect", [("50MB", ("bytes", 50e6)), ("1.5GiB", ("bytes", 1.5 * 2 ** 30)),
                                         ("500KB", ("bytes", 5e5)), ("500kb", ("bytes", 5e5)),
                                         ("2MiB", ("bytes", 2 * 2 ** 20)), ("123456", ("bytes", 123456)),
                                         ("1%", ("share", 0.01)), ("0.5 %", ("share", 0.005)),
                                         ("100%", ("share", 1.0))])
def test_budget_units(text, expect):
    assert parse_budget(text) == expect


@pytest.mark.parametrize("text", ["", "MB", "fifty", "-5MB", "0", "0%", "101%", "5XB", "1e999MB", "nan"])
def test_bad_budgets_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_budget(text)


def test_bad_budget_exits_2_before_reading(shards, tmp_path):
    for args in (["--budget", "-5MB"], ["--budget", "lots"], ["--budget", "1MB", "--ipc", "2"]):
        code, rep = cli("distill", shards["train"], "-m", "random", "-o", tmp_path / "D", "--json", *args)
        assert code == 2 and rep["status"] == "error" and "--budget" in rep["error"], rep
    assert not (tmp_path / "D").exists()


# ---------------------------------------------------------------------------------------------
# Budgets


@pytest.mark.parametrize("budget,labels", [("40KB", "hard"), ("100KB", "hard"), ("60KB", "teacher")])
def test_budget_picks_the_largest_ipc_that_fits(real, tmp_path, budget, labels):
    out = tmp_path / "B"
    rep = api.distill(None, "random", out=out, budget=budget, labels=labels, device="cpu", real=real)
    b = rep["budget"]
    limit = parse_budget(budget)[1]
    assert b["bytes"] == limit and b["ipc"] == rep["ipc"] and b["fits"] and b["achieved"] <= limit
    assert b["achieved"] == rep["bytes"]["total"] == shards_on_disk(out) <= b["estimated"]
    m = json.loads((out / "manifest.json").read_text())["dcompress"]
    assert m["budget"] == b and m["method"]["ipc"] == b["ipc"]
    if b["ipc"] < min(real.class_counts()):          # one more image per class would not fit
        bigger = api.distill(None, "random", out=tmp_path / "C", ipc=b["ipc"] + 1, labels=labels, device="cpu",
                             real=real)
        assert bigger["bytes"]["total"] > limit or b["estimated"] > limit - 10240


def test_budget_as_share_of_the_input(shards, real, tmp_path):
    rep = api.distill(None, "random", out=tmp_path / "S", budget="50%", labels="hard", device="cpu", real=real)
    total = sum(p.stat().st_size for p in Path(shards["train"]).glob("*.tar"))
    assert rep["budget"]["input_bytes"] == total and rep["budget"]["bytes"] == total // 2
    assert rep["budget"]["fits"]


def test_budget_below_one_image_per_class_names_the_smallest(shards, tmp_path):
    code, rep = cli("distill", shards["train"], "-m", "random", "--labels", "hard", "--budget", "10KB",
                    "-o", tmp_path / "D", "--json")
    assert code == 2 and "below one image per class" in rep["error"] and "smallest budget that fits" in rep["error"]
    smallest = int(rep["error"].split("fits is ")[1].split(" bytes")[0].replace(",", ""))
    code, ok = cli("distill", shards["train"], "-m", "random", "--labels", "hard", "--budget", smallest,
                   "-o", tmp_path / "D", "--json")
    assert code == 0 and ok["budget"]["ipc"] == 1 and ok["budget"]["fits"], ok


def test_small_budget_lowers_the_shard_split_and_the_writer_follows(real, tmp_path):
    """The >= 8-shard split costs a 10,240-byte record per shard: under a budget it is lowered
    (8, 4, 2, 1) when that is what fits a larger IPC, recorded, and the writer writes that many."""
    from dcompress.api.budget import output_bytes
    from dcompress.io.output import output_shard_size

    n_cls = real.num_classes
    roomy = api.distill(None, "random", out=tmp_path / "R", budget="2MB", labels="hard", device="cpu", real=real)
    assert roomy["budget"]["min_shards"] == 8            # room enough: the DataLoader-friendly split is kept
    per = sum(roomy["budget"]["per_sample"].values())
    one = output_bytes(n_cls, per, 1000, 0, 1)
    assert one < output_bytes(n_cls, per, 1000, 0, 8)   # the split costs records
    rep = api.distill(None, "random", out=tmp_path / "T", budget=one, labels="hard", device="cpu", real=real)
    b = rep["budget"]
    assert b["ipc"] == 1 and b["min_shards"] < 8 and b["fits"] and b["achieved"] == b["estimated"] <= one
    n_shards = len(list((tmp_path / "T").glob("data-*.tar")))
    assert n_shards == -(-n_cls // output_shard_size(n_cls, 1000, b["min_shards"]))


def test_no_exact_images_writes_the_png_alone_and_the_budget_counts_it(real, tmp_path):
    """`--no-exact-images`: a method that optimises pixels writes its 8-bit PNGs without the
    `.npy`; the set that is labelled and loaded is the PNG's pixels (what any reader loads), and
    the budget estimate drops the `.npy` member, so the same budget fits more images."""
    from dcompress.core import normalize

    kw = dict(labels="hard", device="cpu", real=real, sets=["iterations=2", "batch_real=4"])
    exact = api.distill(None, "dm", out=tmp_path / "E", ipc=2, **kw)
    png = api.distill(None, "dm", out=tmp_path / "P", ipc=2, exact_images=False, **kw)
    assert "npy" in members(tmp_path / "E") and "npy" not in members(tmp_path / "P")
    assert png["bytes"]["images"] < exact["bytes"]["images"]
    a, b = dcompress.load(tmp_path / "E"), dcompress.load(tmp_path / "P")
    u8 = np.stack([np.array(s["png"]) for s in wds.WebDataset(
        [str(p) for p in sorted((tmp_path / "P").glob("data-*.tar"))], shardshuffle=False).decode("pil")])
    import torch
    want = normalize(torch.from_numpy(u8).unsqueeze(1) if u8.ndim == 3 else torch.from_numpy(u8).permute(0, 3, 1, 2),
                     b.mean, b.std)
    assert torch.allclose(b.images, want, atol=1e-6)            # the loader trains on the PNG's pixels
    assert not torch.equal(a.images, b.images)                   # the exact form differed from its PNG
    m = json.loads((tmp_path / "P" / "manifest.json").read_text())["dcompress"]
    assert m.get("exact_tensor") is None and m["run"]["request"]["exact_images"] is False
    small = [api.distill(None, "dm", out=tmp_path / f"B{i}", budget="120KB", exact_images=flag, **kw)["budget"]
             for i, flag in enumerate((None, False))]
    assert small[1]["ipc"] >= small[0]["ipc"] and small[1]["per_sample"]["images"] < small[0]["per_sample"]["images"]
    assert all(b["fits"] for b in small)
    with pytest.raises(UsageError, match="exact-images"):
        api.distill(None, "herding", out=tmp_path / "H", ipc=1, exact_images=True, labels="hard", device="cpu",
                    real=real)


def test_dry_run_shows_the_budget_plan(shards, tmp_path):
    code, rep = cli("distill", shards["train"], "-m", "random", "--labels", "hard", "--budget", "40KB",
                    "--dry-run", "-o", tmp_path / "D", "--json")
    assert code == 0, rep
    plan = rep["plan"]
    assert plan["budget"]["ipc"] == plan["ipc"] and plan["estimated_output_bytes"] == plan["budget"]["estimated"]
    assert plan["estimated_output_bytes"] <= 40_000 and plan["estimated_bytes"]["labels"] == 0
    assert not (tmp_path / "D").exists()


# ---------------------------------------------------------------------------------------------
# Every byte accounted for


def test_hard_output_has_image_and_cls_only_and_bytes_add_up(real, tmp_path):
    out = tmp_path / "H"
    rep = api.distill(None, "random", out=out, ipc=2, labels="hard", device="cpu", real=real)
    assert set(members(out)) == {"png", "cls"}
    b = rep["bytes"]
    assert b["labels"] == 0 and b["images"] + b["labels"] + b["other"] + b["container"] == b["shards"]
    assert b["shards"] == b["total"] == shards_on_disk(out) and "teacher" not in b
    prov = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    assert [p["key"] for p in prov] == dcompress.load(out).keys and all("source_key" in p for p in prov)
    ds = dcompress.load(out)
    assert ds.logits.tolist() == np.eye(3)[ds.labels.numpy()].tolist()


def test_sample_json_is_kept_when_asked(real, tmp_path):
    out = tmp_path / "J"
    rep = api.distill(None, "random", out=out, ipc=1, labels="hard", device="cpu", real=real, sample_json=True)
    assert sorted(set(members(out))) == ["cls", "json", "png"]
    b = rep["bytes"]
    assert b["images"] + b["labels"] + b["other"] + b["container"] == shards_on_disk(out)


def test_old_layout_outputs_still_load(real, tmp_path):
    """An output written before: one-hot `.logits.npy` and `.json` in every hard-label sample."""
    from dcompress.io.codecs import encode_npy, json_bytes
    from dcompress.io.manifest import ShardRow

    out = tmp_path / "old"
    api.distill(None, "random", out=out, ipc=2, labels="hard", device="cpu", real=real)
    new = dcompress.load(out)
    m = json.loads((out / "manifest.json").read_text())
    for row in m["shardlist"]:
        p = out / row["url"]
        with tarfile.open(p) as tar:
            samples = [(mem.name, tar.extractfile(mem).read()) for mem in tar]
        with wds.TarWriter(str(p), encoder=False, mtime=0) as w:
            key = samples[0][0].split(".")[0]
            y = int(dict((n.split(".", 1)[1], d) for n, d in samples)["cls"])
            w.write({"__key__": key, **{n.split(".", 1)[1]: d for n, d in samples},
                     "logits.npy": encode_npy(np.eye(3, dtype=np.float16)[y]), "json": json_bytes({"class": y})})
        fresh = ShardRow.of_file(p, row["nsamples"])
        row.update(filesize=fresh.filesize, md5sum=fresh.md5sum)
    block = m["dcompress"]
    block["labels"]["soft"] = "logits.npy"
    for key in ("image_format", "budget", "bytes"):
        block.pop(key, None)
    (out / "manifest.json").write_text(json.dumps(m))
    assert set(members(out)) == {"png", "cls", "logits.npy", "json"}
    old = dcompress.load(out)
    assert old.images.equal(new.images) and old.labels.equal(new.labels) and old.logits.equal(new.logits)
    assert old.soft_labels.equal(new.soft_labels)
    assert len(list(dcompress.io.loader.webdataset_pipeline(out))[0]) == 3


def test_byte_identical_reruns(real, tmp_path):
    for name in ("a", "b"):
        api.distill(None, "random", out=tmp_path / name, budget="40KB", labels="hard", device="cpu", real=real,
                    image_format="jpeg:80")
    for f in [*(p.name for p in (tmp_path / "a").glob("data-*.tar")), "manifest.json", "provenance.jsonl"]:
        a, b = ((tmp_path / d / f).read_bytes() for d in "ab")
        assert a == b or f == "manifest.json", f
    ma, mb = (json.loads((tmp_path / d / "manifest.json").read_text())["dcompress"] for d in "ab")
    assert ma["bytes"] == mb["bytes"] and ma["budget"] == mb["budget"]


# ---------------------------------------------------------------------------------------------
# Image formats


@pytest.mark.parametrize("fmt,member", [("jpeg:75", "jpg"), ("webp:80", "webp")])
def test_image_format_round_trip(real, tmp_path, fmt, member):
    out = tmp_path / member
    rep = api.distill(None, "random", out=out, ipc=2, labels="hard", device="cpu", real=real, image_format=fmt)
    assert rep["image_format"] == fmt and set(members(out)) == {member, "cls"}
    m = json.loads((out / "manifest.json").read_text())["dcompress"]
    assert m["image_format"] == fmt
    ds = dcompress.load(out)
    assert ds.images.shape == (6, 1, 28, 28)
    items = list(dcompress.io.loader.webdataset_pipeline(out))
    assert len(items) == 6 and items[0][0].shape[:2] == (28, 28)
    # what a reader decodes is what the loader (and so evaluate) trains on
    from dcompress.core import normalize
    import torch

    pix = torch.from_numpy(np.stack([it[0][..., :1].transpose(2, 0, 1) for it in items]))
    if member == "jpg":
        assert torch.allclose(normalize(pix, ds.mean, ds.std), ds.images, atol=1e-5)
    png = api.distill(None, "random", out=tmp_path / "png", ipc=2, labels="hard", device="cpu", real=real)
    assert rep["bytes"]["images"] < png["bytes"]["images"]
    assert not torch.equal(dcompress.load(tmp_path / "png").images, ds.images)     # lossy: other pixels


def test_image_format_is_refused_for_synthesis_and_bad_values(shards, tmp_path):
    code, rep = cli("distill", shards["train"], "-m", "dm", "--ipc", "1", "--image-format", "jpeg:80",
                    "-o", tmp_path / "D", "--json")
    assert code == 2 and "selection methods only" in rep["error"]
    for bad in ("gif", "jpeg:0", "jpeg:abc", "png:5"):
        code, rep = cli("distill", shards["train"], "-m", "random", "--ipc", "1", "--image-format", bad,
                        "-o", tmp_path / "D", "--json")
        assert code == 2 and "--image-format" in rep["error"], (bad, rep)


# ---------------------------------------------------------------------------------------------
# CI gates


def test_gates_pass_and_fail_with_exit_9(shards, tmp_path):
    out = tmp_path / "G"
    assert cli("distill", shards["train"], "-m", "random", "--ipc", "2", "--labels", "hard", "-o", out, "--json")[0] == 0
    base = ["evaluate", out, "--test", shards["test"], "--runs", "1", "--epochs", "2", "--json"]
    code, rep = cli(*base, "--min-accuracy", "0", "--min-gain-over-random", "-100")
    assert code == 0 and rep["status"] == "ok" and all(g["passed"] for g in rep["gates"])
    code, rep = cli(*base, "--min-accuracy", "100.0", "--min-gain-over-random", "100")
    assert code == 9 and rep["status"] == "gate_failed" and rep["exit_code"] == 9, rep
    failed = {g["gate"]: g for g in rep["failed"]}
    assert set(failed) == {"min_accuracy", "min_gain_over_random"} or failed["min_gain_over_random"]
    g = failed["min_gain_over_random"]
    assert g["threshold"] == 100 and g["measured"] == round(rep["compressed"]["mean"] - rep["random"]["mean"], 2)
    assert "compressed" in rep and "gate failed" in rep["error"]


def test_gate_options_are_checked(shards, tmp_path):
    out = tmp_path / "G"
    assert cli("distill", shards["train"], "-m", "random", "--ipc", "1", "--labels", "hard", "-o", out, "--json")[0] == 0
    base = ["evaluate", out, "--test", shards["test"], "--runs", "1", "--epochs", "1", "--json"]
    assert cli(*base, "--min-accuracy", "120")[0] == 2
    code, rep = cli(*base, "--no-random", "--min-gain-over-random", "1")
    assert code == 2 and "--no-random" in rep["error"]
