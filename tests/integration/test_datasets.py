"""Bringing your own dataset (docs/datasets.md): mixed-size ImageFolders of JPEGs, other tools'
shards with `.json` labels, label keys, class lists, --size at shard and at distill."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from dcompress.cli import app
from dcompress.io.loader import load

runner = CliRunner()
SIZES = [(40, 30), (24, 50), (33, 33), (60, 20)]          # (W, H): no two alike
CLASSES = ["cat", "dog", "emu"]


def cli(*args) -> tuple[int, dict]:
    r = runner.invoke(app, [*map(str, args), "--json"])
    return r.exit_code, json.loads(r.stdout.strip().splitlines()[-1])


def jpeg(w: int, h: int, value: int) -> bytes:
    rng = np.random.default_rng(value)
    arr = np.clip(rng.normal(value, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An ImageFolder of mixed-size JPEGs: 3 classes x 4 images."""
    root = tmp_path_factory.mktemp("imgs") / "train"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES):
            (root / name / f"{i}.jpg").write_bytes(jpeg(w, h, 60 * c + 40))
    return root


def distill_random(src, out, *extra) -> tuple[int, dict]:
    return cli("distill", src, "--method", "random", "--ipc", "1", "--labels", "hard", "-o", out, *extra)


def test_mixed_sizes_without_size_suggest_it(folder, tmp_path):
    code, rep = cli("shard", folder, tmp_path / "s")              # files are copied as they are
    assert code == 0 and rep["samples"] == 12
    code, rep = distill_random(tmp_path / "s", tmp_path / "o")
    assert code == 4 and "mixed image sizes" in rep["error"] and "--size" in rep["error"]
    assert not (tmp_path / "o").exists()


def test_size_at_shard_then_distill(folder, tmp_path):
    code, rep = cli("shard", folder, tmp_path / "s", "--size", "16")
    assert code == 0 and rep["samples"] == 12 and rep["resize"]["size"] == 16
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["dcompress"]["resize"]["resize_mode"] == "crop" and m["dcompress"]["class_names"] == CLASSES
    code, rep = distill_random(tmp_path / "s", tmp_path / "o")
    assert code == 0, rep
    ds = load(tmp_path / "o")
    assert tuple(ds.images.shape[1:]) == (3, 16, 16) and ds.classes == CLASSES
    assert rep["class_source"] == "manifest" and rep["decode"]["size"] is None

    # the same pixels as resizing at distill time from the original (copied) files: PNG is lossless
    assert cli("shard", folder, tmp_path / "raw")[0] == 0
    code, rep2 = distill_random(tmp_path / "raw", tmp_path / "o2", "--size", "16")
    assert code == 0, rep2
    src1 = json.loads((tmp_path / "o" / "manifest.json").read_text())["dcompress"]["source"]
    src2 = json.loads((tmp_path / "o2" / "manifest.json").read_text())["dcompress"]["source"]
    assert src1["fingerprint"] == src2["fingerprint"]
    assert src2["decode"] == {"label_key": "cls", "max_pixels": src2["decode"]["max_pixels"], "size": 16,
                              "resize_mode": "crop", "channels": None}


def test_networks_follow_the_size_and_are_recorded(folder, tmp_path):
    assert cli("shard", folder, tmp_path / "s")[0] == 0
    code, rep = distill_random(tmp_path / "s", tmp_path / "o", "--size", "64")
    assert code == 0 and rep["nets"] == {"eval": "convnet_d4"}          # random has no model of its own
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())["dcompress"]
    assert m["method"]["nets"] == {"eval": "convnet_d4"} and m["eval_protocol"]["model"] == "convnet"
    code, rep = distill_random(tmp_path / "s", tmp_path / "o32", "--size", "32")
    assert code == 0 and rep["nets"] == {"eval": "convnet_d3"}


@pytest.mark.parametrize("mode", ["pad", "stretch"])
def test_resize_modes_at_distill(folder, tmp_path, mode):
    assert cli("shard", folder, tmp_path / "s")[0] == 0
    code, rep = distill_random(tmp_path / "s", tmp_path / "o", "--size", "12", "--resize-mode", mode)
    assert code == 0 and rep["decode"]["resize_mode"] == mode
    assert tuple(load(tmp_path / "o").images.shape[1:]) == (3, 12, 12)


def test_shard_class_names_fix_the_order(folder, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("emu\ncat\ndog\n")
    code, rep = cli("shard", folder, tmp_path / "s", "--size", "8", "--class-names", names)
    assert code == 0
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["dcompress"]["class_names"] == ["emu", "cat",
                                                                                                     "dog"]
    names.write_text("cat\ndog\n")
    code, rep = cli("shard", folder, tmp_path / "s2", "--class-names", names)
    assert code == 4 and "'emu' is not in --class-names" in rep["error"]


# ------------------------------------------------------------- shards written by other tools

def tarwriter_shards(folder: Path, labels: list, *, size=(20, 20)) -> Path:
    """Shards the way other tools write them: webdataset's TarWriter with its default encoder,
    `.jpg` bytes and a `.json` dict (no `.cls`)."""
    folder.mkdir(parents=True)
    with wds.TarWriter(str(folder / "part-000.tar")) as w:
        for i, label in enumerate(labels):
            meta = {"id": i, "annotation": {"label": label}} if label is not None else {"id": i}
            w.write({"__key__": f"s{i:04d}", "jpg": jpeg(*size, 30 + 20 * (i % 3)), "json": meta})
    return folder


def test_tarwriter_jpg_json_with_one_flag(tmp_path):
    src = tarwriter_shards(tmp_path / "in", ["dog", "cat", "emu"] * 3)
    code, rep = distill_random(src, tmp_path / "o")
    # no .cls in any sample: the label is looked for in the wrong place, a configuration error on
    # the first shard (issue 23; was exit 4 "no usable samples" after counting every sample bad)
    assert code == 2 and "part-000.tar" in rep["error"] and rep["error_type"] == "UsageError", rep
    assert "missing .cls label (has: jpg, json; pick the label with --label-key)" in rep["error"]
    code, rep = distill_random(src, tmp_path / "o", "--label-key", "json:annotation.label")
    assert code == 0, rep
    ds = load(tmp_path / "o")
    assert ds.classes == ["cat", "dog", "emu"] and rep["class_source"] == "labels"
    assert sorted(ds.labels.tolist()) == [0, 1, 2]


def test_class_names_file_and_missing_labels(tmp_path):
    src = tarwriter_shards(tmp_path / "in", ["dog", "cat", None, "emu", "cat", "dog", "emu"])
    names = tmp_path / "names.txt"
    names.write_text("emu\ndog\ncat\n")
    code, rep = distill_random(src, tmp_path / "o", "--label-key", "json:annotation.label", "--class-names", names)
    assert code == 0, rep
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())["dcompress"]
    assert m["class_names"] == ["emu", "dog", "cat"] and m["source"]["class_source"] == "option"
    assert m["bad_samples"]["count"] == 1
    assert "missing label field 'annotation.label'" in m["bad_samples"]["examples"][0]
    assert m["source"]["class_counts"] == [2, 2, 2]
    # one bad sample allowed, so --max-bad 0 stops the run (exit 3)
    code, rep = distill_random(src, tmp_path / "o3", "--label-key", "json:annotation.label", "--max-bad", "0")
    assert code == 3 and "missing label field" in rep["error"]


def test_string_label_not_in_class_names_is_exit_4(tmp_path):
    src = tarwriter_shards(tmp_path / "in", ["dog", "cat", "wolf"])
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    code, rep = distill_random(src, tmp_path / "o", "--label-key", "json:annotation.label", "--class-names", names)
    assert code == 4 and "'wolf'" in rep["error"] and "s0002" in rep["error"]
    assert "not in the class list" in rep["error"] and "part-000.tar" in rep["error"]
    assert not (tmp_path / "o").exists()


def test_classes_txt_beside_the_shards_is_read(tmp_path):
    src = tarwriter_shards(tmp_path / "in", ["dog", "cat", "emu"] * 2)
    (src / "classes.txt").write_text("emu\ncat\ndog\n")
    code, rep = distill_random(src, tmp_path / "o", "--label-key", "json:annotation.label")
    assert code == 0 and rep["class_source"] == "classes.txt"
    assert load(tmp_path / "o").classes == ["emu", "cat", "dog"]


def test_bad_decode_options_are_usage_errors(tmp_path):
    src = tarwriter_shards(tmp_path / "in", ["dog", "cat"])
    for extra, why in ((["--size", "0"], "--size"), (["--resize-mode", "pad"], "needs --size"),
                       (["--label-key", "txt:x"], "JSON member"),
                       (["--class-names", tmp_path / "none.txt"], "none.txt")):
        code, rep = distill_random(src, tmp_path / "o", *extra)
        assert code == (4 if why == "none.txt" else 2) and why in rep["error"], (extra, rep)


def test_evaluate_decodes_test_shards_like_the_set(folder, tmp_path):
    """A set distilled with --size and string labels: evaluate reads --test with the recorded
    size and label key, and maps its labels with the set's class names."""
    src = tarwriter_shards(tmp_path / "in", ["dog", "cat", "emu"] * 2, size=(30, 20))
    test = tarwriter_shards(tmp_path / "test", ["emu", "emu", "dog"], size=(18, 26))   # no "cat": same mapping
    code, rep = distill_random(src, tmp_path / "o", "--label-key", "json:annotation.label", "--size", "12")
    assert code == 0, rep
    code, rep = cli("evaluate", tmp_path / "o", "--test", test, "--runs", "1", "--epochs", "1", "--no-random",
                    "--model", "convnet_w8")
    assert code == 0, rep
    assert rep["test_samples"] == 3


def test_evaluate_with_a_damaged_recorded_decode(tmp_path):
    src = tarwriter_shards(tmp_path / "in", ["dog", "cat"] * 2)
    assert distill_random(src, tmp_path / "o", "--label-key", "json:annotation.label")[0] == 0
    mpath = tmp_path / "o" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["dcompress"]["source"]["decode"]["size"] = -3
    mpath.write_text(json.dumps(m))
    code, rep = cli("evaluate", tmp_path / "o", "--test", src, "--runs", "1", "--epochs", "1", "--no-random")
    assert code == 4 and "dcompress.source.decode" in rep["error"] and "--size" in rep["error"]
    code, rep = cli("evaluate", tmp_path / "o", "--test", src, "--no-random", "--size", "0")
    assert code == 2 and "--size" in rep["error"]
