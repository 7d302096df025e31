"""Bad input: each case gets its exact error, a distinct exit code, and nothing half-written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dcompress.cli import app
from dcompress.io.manifest import md5_file
from tests.conftest import make_images, png_bytes, write_tar

runner = CliRunner()


def distill(src, out: Path, *extra: str):
    r = runner.invoke(app, ["distill", *map(str, src if isinstance(src, list) else [src]), "--method", "random",
                            "--ipc", "1", "-o", str(out), "--labels", "hard", "--json", *extra])
    return r, (json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None)


def good_samples(n_per_class=2, classes=2, size=28, prefix="k"):
    x, y = make_images(n_per_class, classes=classes, size=size)
    return [{"__key__": f"{prefix}{i:04d}", "png": png_bytes(x[i]), "cls": str(int(y[i])).encode()} for i in range(len(y))]


def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_empty_input(tmp_path):
    tar = write_tar(tmp_path / "empty.tar", [])
    r, rep = distill(tar, tmp_path / "o")
    assert r.exit_code == 4 and "no usable samples" in rep["error"]
    assert_nothing_written(tmp_path / "o")


def test_missing_shard_is_named(tmp_path):
    r, rep = distill(str(tmp_path / "nope-{000000..000001}.tar"), tmp_path / "o")
    assert r.exit_code == 4 and "nope-000000.tar" in rep["error"] and "shard not found" in rep["error"]


def test_truncated_tar_counts_as_bad_and_fails_past_max_bad(tmp_path):
    tar = write_tar(tmp_path / "t.tar", good_samples(4))
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])
    r, rep = distill(tar, tmp_path / "o", "--max-bad", "0")
    assert r.exit_code == 3 and "t.tar" in rep["error"] and "--max-bad 0" in rep["error"]
    assert_nothing_written(tmp_path / "o")
    ok, rep2 = distill(tar, tmp_path / "o2", "--max-bad", "5")
    assert ok.exit_code == 0, ok.output
    assert rep2["bad_samples"] == 1


def test_member_that_is_not_an_image(tmp_path):
    samples = good_samples()
    samples.append({"__key__": "txt0001", "txt": b"hello", "cls": b"0"})
    r, rep = distill(write_tar(tmp_path / "a.tar", samples), tmp_path / "o", "--max-bad", "0")
    assert r.exit_code == 3 and "'txt0001'" in rep["error"] and "no image member" in rep["error"]


def test_undecodable_png(tmp_path):
    samples = good_samples()
    samples.append({"__key__": "bad0001", "png": b"\x89PNG not really", "cls": b"0"})
    r, rep = distill(write_tar(tmp_path / "a.tar", samples), tmp_path / "o", "--max-bad", "0")
    assert r.exit_code == 3 and "'bad0001'" in rep["error"] and "not a decodable image" in rep["error"]


@pytest.mark.parametrize("cls,needle", [(None, "missing .cls"), (b"seven", "not an integer")])
def test_missing_or_non_integer_cls(tmp_path, cls, needle):
    samples = good_samples()
    s = {"__key__": "odd0001", "png": samples[0]["png"]}
    if cls is not None:
        s["cls"] = cls
    samples.append(s)
    r, rep = distill(write_tar(tmp_path / "a.tar", samples), tmp_path / "o", "--max-bad", "0")
    assert r.exit_code == 3 and "'odd0001'" in rep["error"] and needle in rep["error"]


def test_label_outside_class_list(shards, tmp_path):
    # a manifest declaring 3 classes, plus a shard whose sample says class 7
    import shutil

    src = tmp_path / "in"
    shutil.copytree(shards["train"], src)
    extra = write_tar(src / "extra.tar", [{"__key__": "x0001", "png": good_samples()[0]["png"], "cls": b"7"}])
    m = json.loads((src / "manifest.json").read_text())
    m["shardlist"].append({"url": extra.name, "nsamples": 1, "filesize": extra.stat().st_size,
                           "md5sum": md5_file(extra)})     # the row must match: a mismatch is a damaged shard
    (src / "manifest.json").write_text(json.dumps(m))
    r, rep = distill(src, tmp_path / "o")
    assert r.exit_code == 4 and "label 7 outside the class list of 3" in rep["error"] and "x0001" in rep["error"]


def test_mixed_image_sizes(tmp_path):
    samples = good_samples() + good_samples(1, size=32, prefix="big")
    r, rep = distill(write_tar(tmp_path / "a.tar", samples), tmp_path / "o")
    assert r.exit_code == 4 and "mixed image size" in rep["error"] and "big0000" in rep["error"]


def test_mixed_channels(tmp_path):
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    samples = good_samples() + [{"__key__": "rgb0001", "png": png_bytes(rgb), "cls": b"0"}]
    r, rep = distill(write_tar(tmp_path / "a.tar", samples), tmp_path / "o")
    assert r.exit_code == 4 and "mixed channels" in rep["error"] and "rgb0001" in rep["error"]


def test_class_with_fewer_images_than_ipc(shards, tmp_path):
    r = runner.invoke(app, ["distill", str(shards["train"]), "--method", "random", "--ipc", "13", "-o",
                            str(tmp_path / "o"), "--json"])
    assert r.exit_code == 4 and "has 12 images, fewer than --ipc 13" in json.loads(r.stdout)["error"]
    assert_nothing_written(tmp_path / "o")


def test_duplicate_keys_across_shards(tmp_path):
    a = write_tar(tmp_path / "a.tar", good_samples())
    b = write_tar(tmp_path / "b.tar", good_samples())
    r, rep = distill([a, b], tmp_path / "o")
    assert r.exit_code == 4 and "duplicate key" in rep["error"] and "k0000" in rep["error"]


def test_unknown_method(shards, tmp_path):
    r = runner.invoke(app, ["distill", str(shards["train"]), "--method", "magic", "--ipc", "1", "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 2 and "unknown method 'magic'" in json.loads(r.stdout)["error"]


def test_bad_set_key_and_value(shards, tmp_path):
    from dcompress.config import resolve_config
    from dcompress.errors import UsageError

    r = runner.invoke(app, ["distill", str(shards["train"]), "--method", "random", "--ipc", "1", "-o",
                            str(tmp_path / "o"), "--set", "bogus=1", "--json"])
    assert r.exit_code == 2 and "unknown config key 'bogus'" in json.loads(r.stdout)["error"]
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        iterations: int = 10
        lr_img: float = 1.0

    with pytest.raises(UsageError, match="bad value 'ten' for 'iterations'"):
        resolve_config(Cfg, sets=["iterations=ten"])
    with pytest.raises(UsageError, match="expects key=value"):
        resolve_config(Cfg, sets=["lr_img"])
    assert resolve_config(Cfg, sets=["lr_img=0.5"]).lr_img == 0.5


def test_output_folder_holding_something_else(shards, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r, rep = distill(shards["train"], out)
    assert r.exit_code == 5 and "not a dcompress output" in rep["error"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_bad_ratio_and_ipc(shards, tmp_path):
    r = runner.invoke(app, ["distill", str(shards["train"]), "--method", "random", "--ratio", "1.5", "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 2 and "--ratio must be in (0, 1]" in json.loads(r.stdout)["error"]
    r = runner.invoke(app, ["distill", str(shards["train"]), "--method", "random", "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 2 and "exactly one of --ipc or --ratio" in json.loads(r.stdout)["error"]
