"""The typed manifests (io/manifest.py): to_dict ⇄ from_dict round trips, every validation error
names its key, and manifests written before the dataclasses (no `run`/`files`/`timings`) load."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from dcompress.io.schema import EvalProtocol
from dcompress.errors import InputDataError
from dcompress.io.experts_schema import ExpertsInput, ExpertsManifest, NetworkRecord, SplitRecord
from dcompress.io.manifest import ShardRow, build_manifest, read_compressed, read_input, read_manifest
from dcompress.io.schema import (BadSamplesRecord, CompressedBlock, InputBlock, InputSource, LabelsRecord,
                                 LearnedRecord, MethodRecord, Normalization, RunRecord, SourceRecord)

P = "m.json"


def compressed() -> CompressedBlock:
    return CompressedBlock(
        version="0.1", method=MethodRecord(name="dm", kind="synthesis", ipc=2, ratio=None, seed=3, device="cpu",
                                           config={"iterations": 2}, experts=None, teacher_config={"epochs": 1}),
        source=SourceRecord(urls=["/d/train-000000.tar"], num_samples=6, fingerprint="sha256:ab", class_counts=[3, 3]),
        bad_samples=BadSamplesRecord(count=1, examples=["k1: bad png"]), class_names=("a", "b"),
        labels=LabelsRecord(kind="learned", teacher={"model": "convnet", "path": "/c/t.pt"}),
        normalization=Normalization(mean=(0.5,), std=(0.25,)), image_shape=(1, 28, 28), exact_tensor="npy",
        learned=LearnedRecord(lr=0.01, lrs=None), eval_protocol=EvalProtocol(epochs=5, soft_labels=True),
        info={"iterations": 2}, run=RunRecord(key="k", request={"method": "dm"}), env={"python": "3.11"},
        timings={"read_s": 0.1, "fit_s": 2.0}, num_samples=4, extra_files=[], urls="data-{000000..000000}.tar",
        files={"card": "README.md"})


def experts() -> ExpertsManifest:
    return ExpertsManifest(
        network=NetworkRecord(name="convnet", channels=1, num_classes=2, im_size=[28, 28], param_count=100),
        input=ExpertsInput(fingerprint="sha256:ab", urls=["/d/t.tar"], num_samples=6, class_names=["a", "b"]),
        normalization=Normalization(mean=(0.5,), std=(0.25,)), training={"model": "convnet", "epochs": 2},
        split=SplitRecord(holdout=0.05, train_samples=5, heldout_samples=1, test_fingerprint=None),
        version="0.1", identity="abc", experts=[0, 1], updated=12.5)


def through_json(d: dict) -> dict:
    return json.loads(json.dumps(d))


def test_compressed_block_round_trips_with_the_written_key_order():
    b = compressed()
    d = through_json(b.to_dict())
    assert CompressedBlock.from_dict(d, P) == b
    assert list(d) == ["format_version", "version", "kind", "method", "source", "bad_samples", "class_names",
                       "labels", "normalization", "image_shape", "exact_tensor", "learned", "eval_protocol", "info",
                       "run", "env", "timings", "num_samples", "extra_files", "urls", "files"]
    assert list(d["labels"]) == ["hard", "soft", "kind", "dtype", "temperature", "teacher"]
    assert d["eval_protocol"] == dataclasses.asdict(b.eval_protocol)


@pytest.mark.parametrize("make", [lambda: InputBlock(split="train", num_samples=8, class_names=("a", "b"),
                                                     source=InputSource(path="/src", format="idx"),
                                                     urls="train-{000000..000001}.tar", env={"python": "3"}),
                                  lambda: InputBlock(class_names=None)])
def test_input_block_round_trips(make):
    b = make()
    assert InputBlock.from_dict(through_json(b.to_dict()), P) == b


def test_experts_manifest_round_trips_and_keeps_its_identity():
    m = experts()
    d = through_json(m.to_dict())
    assert ExpertsManifest.from_dict(d, P) == m
    assert list(d)[:4] == ["format", "format_version", "version", "identity"]
    assert m.epochs == 2 and len(m.compute_identity()) == 16
    # the identity ignores bookkeeping (experts, time, version) and the held-out count
    other = dataclasses.replace(m, experts=[], updated=0.0, version="9",
                                split=dataclasses.replace(m.split, heldout_samples=7))
    assert other.compute_identity() == m.compute_identity()
    assert dataclasses.replace(m, training={"model": "convnet", "epochs": 3}).compute_identity() != m.compute_identity()


def test_shard_row_round_trips_and_omits_what_is_unknown():
    r = ShardRow(url="data-000000.tar", nsamples=4, filesize=10240, md5sum="d41d")
    assert ShardRow.from_dict(r.to_dict(), P, 0) == r
    assert ShardRow(url="x.tar").to_dict() == {"url": "x.tar"}


def test_manifest_files_read_back_typed(tmp_path):
    rows = [ShardRow(url="data-000000.tar", nsamples=4, filesize=1, md5sum="x")]
    (tmp_path / "manifest.json").write_text(json.dumps(build_manifest("dm-out", rows, compressed())))
    manifest, got_rows, block = read_compressed(tmp_path)
    assert got_rows == rows and block == compressed() and manifest["name"] == "dm-out"
    (tmp_path / "manifest.json").write_text(json.dumps(build_manifest("in", rows, InputBlock(class_names=("a",)))))
    assert read_input(tmp_path)[2] == InputBlock(class_names=("a",))
    assert read_manifest(tmp_path)["dcompress"]["kind"] == "input"


def test_an_old_style_block_without_run_files_timings_loads():
    d = through_json(compressed().to_dict())
    for k in ("run", "files", "timings", "env", "version", "urls", "extra_files", "num_samples"):
        d.pop(k)
    d["labels"].pop("temperature")
    d.pop("learned")
    d["eval_protocol"] = {"epochs": 5}
    b = CompressedBlock.from_dict(d, P)
    assert b.run is None and b.files is None and b.timings is None and b.learned == LearnedRecord()
    assert b.labels.temperature == 1.0 and b.eval_protocol == EvalProtocol(epochs=5)
    assert "run" not in b.to_dict() and "files" not in b.to_dict()


def _set(path: str, value):
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        for k in parents:
            d = d[k]
        if value is KeyError:
            d.pop(last)
        else:
            d[last] = value
    return mutate


BAD_BLOCKS = [
    ("kind", "input", "dcompress.kind"),
    ("kind", KeyError, "dcompress.kind"),
    ("class_names", KeyError, "dcompress.class_names"),
    ("class_names", "ab", "dcompress.class_names"),
    ("class_names", [], "dcompress.class_names"),
    ("class_names", [1, 2], "dcompress.class_names"),
    ("normalization", KeyError, "dcompress.normalization"),
    ("normalization.std", [0.0], "dcompress.normalization.std"),
    ("normalization.mean", [0.1, 0.2], "dcompress.normalization"),
    ("normalization.mean", ["x"], "dcompress.normalization.mean"),
    ("image_shape", [1, 28], "dcompress.image_shape"),
    ("image_shape", "1x28x28", "dcompress.image_shape"),
    ("labels", KeyError, "dcompress.labels"),
    ("labels.kind", KeyError, "dcompress.labels.kind"),
    ("labels.temperature", "hot", "dcompress.labels.temperature"),
    ("labels.teacher", "t.pt", "dcompress.labels.teacher"),
    ("eval_protocol", KeyError, "dcompress.eval_protocol"),
    ("eval_protocol.bogus", 1, "dcompress.eval_protocol.bogus"),
    ("eval_protocol.epochs", "many", "dcompress.eval_protocol.epochs"),
    ("eval_protocol.soft_labels", 1, "dcompress.eval_protocol.soft_labels"),
    ("learned", "x", "dcompress.learned"),
    ("learned.lr", "fast", "dcompress.learned"),
    ("learned.lrs", "fast", "dcompress.learned.lrs"),
    ("method", "dm", "dcompress.method"),
    ("source", ["a.tar"], "dcompress.source"),
    ("run", "k", "dcompress.run"),
    ("files", ["README.md"], "dcompress.files"),
    ("timings", 3, "dcompress.timings"),
    ("num_samples", -1, "dcompress.num_samples"),
    ("urls", 5, "dcompress.urls"),
]


@pytest.mark.parametrize("where,value,key", BAD_BLOCKS, ids=[f"{w}={v!r}" for w, v, _ in BAD_BLOCKS])
def test_every_block_error_names_its_key(where, value, key):
    d = through_json(compressed().to_dict())
    _set(where, value)(d)
    with pytest.raises(InputDataError) as e:
        CompressedBlock.from_dict(d, P)
    assert e.value.key == key and e.value.path == P and key in str(e.value)


def test_a_block_that_is_not_an_object_is_refused():
    for block in (None, [], "x"):
        with pytest.raises(InputDataError, match="dcompress.kind"):
            CompressedBlock.from_dict(block, P)
    with pytest.raises(InputDataError, match="'dcompress'"):
        InputBlock.from_dict([], P)
    with pytest.raises(InputDataError, match="dcompress.class_names"):
        InputBlock.from_dict({"class_names": "ab"}, P)


BAD_ROWS = [({"url": ""}, "shardlist[0].url"), ({"nsamples": 2}, "shardlist[0].url"),
            ({"url": "a.tar", "nsamples": -1}, "shardlist[0].nsamples"),
            ({"url": "a.tar", "filesize": True}, "shardlist[0].filesize"),
            ({"url": "a.tar", "md5sum": 5}, "shardlist[0].md5sum"), ("a.tar", "shardlist[0]")]


@pytest.mark.parametrize("row,key", BAD_ROWS)
def test_every_row_error_names_its_key(row, key):
    with pytest.raises(InputDataError) as e:
        ShardRow.from_dict(row, P, 0)
    assert e.value.key == key


BAD_EXPERTS = [
    (lambda m: m.update(format="other"), "format"),
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m.update(format_version="1"), "format_version"),
    (lambda m: m.pop("network"), "network"),
    (lambda m: m["network"].update(param_count="abc"), "network/training"),
    (lambda m: m["training"].pop("epochs"), "epochs"),
    (lambda m: m.update(split=[]), "split"),
]


@pytest.mark.parametrize("damage,named", BAD_EXPERTS)
def test_every_experts_manifest_error_names_its_key(damage, named):
    d = through_json(experts().to_dict())
    damage(d)
    with pytest.raises(InputDataError, match=named):
        ExpertsManifest.from_dict(d, P)


def test_experts_manifest_tolerates_missing_bookkeeping():
    d = through_json(experts().to_dict())
    for k in ("identity", "experts", "updated", "version", "snapshots"):
        d.pop(k)
    m = ExpertsManifest.from_dict(copy.deepcopy(d), P)
    assert m.experts == [] and m.identity is None and m.snapshots["file"] == "expert-{id:05d}.npy"
