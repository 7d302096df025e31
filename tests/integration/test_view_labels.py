"""`--labels views` and `--labels online` end to end: what is written, what `dcompress.load`
replays (for any DataLoader), what evaluate trains on, and the damaged outputs it refuses."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dcompress import api
from dcompress.errors import InputDataError, UsageError
from dcompress.io.loader import load

TEACHER = ["model=convnet_w8", "epochs=1"]


def distill(real, out: Path, labels: str, views: int = 3, **kw) -> dict:
    return api.distill(None, "random", out=out, ipc=2, labels=labels, label_views=views, teacher_sets=TEACHER,
                       device="cpu", real=real, **kw)


@pytest.fixture(scope="module")
def outputs(real, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("views")
    return {"views": (base / "v", distill(real, base / "v", "views")),
            "online": (base / "o", distill(real, base / "o", "online")),
            "topk": (base / "k", distill(real, base / "k", "views", label_topk=1))}


def test_views_output_replays_the_teachers_labels_of_each_view(outputs):
    (vpath, rep), (opath, _) = outputs["views"], outputs["online"]
    assert rep["labels"] == "views"
    ds, online = load(vpath), load(opath)
    assert ds.num_views == online.num_views == 3 and ds.logits is None
    for e in range(3):
        x, logits = ds.epoch_batch(e)
        ox, ologits = online.epoch_batch(e)
        torch.testing.assert_close(x, ox, rtol=0, atol=0)            # same views: same seed, same recipe
        torch.testing.assert_close(logits, ologits.half().float(), rtol=0, atol=1e-2)   # stored as float16
    manifest = json.loads((vpath / "manifest.json").read_text())["dcompress"]
    assert manifest["labels"]["format"] == 2 and manifest["labels"]["views"]["epochs"] == 3
    assert manifest["eval_protocol"]["kd"] is True and manifest["labels"]["temperature"] == 20.0


def test_any_loader_gets_the_same_views(outputs):
    ds = load(outputs["views"][0])
    ds.set_epoch(1)
    one = [ds[i] for i in range(len(ds))]
    for workers, batch in ((0, 1), (2, 3)):
        got = [item for xb, sb, yb in torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)
               for item in zip(xb, sb, yb)]
        for (x, s, y), (gx, gs, gy) in zip(one, got):
            torch.testing.assert_close(x, gx, rtol=0, atol=0)
            torch.testing.assert_close(s, gs, rtol=0, atol=0)
            assert int(y) == int(gy)


def test_topk_views_store_k_logits_per_view(outputs):
    ds = load(outputs["topk"][0])
    assert ds.label_topk == 1
    assert torch.isfinite(ds.view_logits).sum(-1).eq(1).all()
    full = load(outputs["views"][0])
    assert outputs["topk"][1]["bytes"]["labels"] < outputs["views"][1]["bytes"]["labels"]
    torch.testing.assert_close(ds.view_logits.argmax(-1), full.view_logits.argmax(-1))


def test_online_output_ships_its_teacher(outputs):
    path = outputs["online"][0]
    manifest = json.loads((path / "manifest.json").read_text())["dcompress"]
    teacher = manifest["labels"]["teacher"]
    assert manifest["labels"]["soft"] is None and teacher["file"] == "teacher.pt"
    assert teacher["sha256"] == hashlib.sha256((path / "teacher.pt").read_bytes()).hexdigest()
    assert {"teacher.pt", "teacher.json"} <= set(manifest["extra_files"])


def test_evaluate_trains_on_the_views_and_gives_random_subsets_the_same_labels(outputs, shards):
    r = api.evaluate(outputs["online"][0], str(shards["test"]), train=str(shards["train"]), runs=1, epochs=2,
                     device="cpu")                   # the random subsets get the teacher the output ships
    assert r["protocol"]["kd"] and "3 views per image" in r["random"]["labels"]
    r = api.evaluate(outputs["views"][0], str(shards["test"]), train=str(shards["train"]), runs=1, epochs=2,
                     device="cpu", protocol="fair", lr_grid="0.01", val_per_class=2, ars=False, full_epochs=1)
    assert [row["labels"] for row in r["fair"]["results"]] == ["hard", "soft"]
    assert "3 views per image" in r["random"]["labels"]


def copy_output(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def rewrite_member(out: Path, suffix: str, fn) -> None:
    """Rewrites the first sample's member ending in `suffix` with fn(bytes) and fixes the manifest row."""
    manifest = json.loads((out / "manifest.json").read_text())
    row = manifest["shardlist"][0]
    shard = out / row["url"]
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers() if m.isreg()]
    done = False
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            if not done and m.name.endswith(suffix):
                data, done = fn(data), True
            m.size = len(data)
            import io

            tf.addfile(m, io.BytesIO(data))
    row["filesize"], row["md5sum"] = shard.stat().st_size, hashlib.md5(shard.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))


def npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_a_missing_partner_key_names_shard_and_key(outputs, tmp_path):
    out = copy_output(outputs["views"][0], tmp_path / "o")

    def foreign_partner(data: bytes) -> bytes:
        import io

        rec = np.load(io.BytesIO(data), allow_pickle=False)
        rec["pclass"], rec["pslot"] = 2, 99
        return npy(rec)
    rewrite_member(out, ".views.npy", foreign_partner)
    with pytest.raises(InputDataError, match="c0002-00099 is not in the set") as e:
        load(out)
    assert e.value.key and e.value.key.startswith("c")


def test_a_view_count_other_than_the_manifests_is_refused(outputs, tmp_path):
    out = copy_output(outputs["views"][0], tmp_path / "o")

    def drop_one(data: bytes) -> bytes:
        import io

        return npy(np.load(io.BytesIO(data), allow_pickle=False)[:2])
    rewrite_member(out, ".views.npy", drop_one)
    with pytest.raises(InputDataError, match="holds 2 views, the manifest says 3"):
        load(out)


@pytest.mark.parametrize("damage", ["missing", "altered", "pickle"])
def test_an_online_teacher_that_is_gone_altered_or_a_pickle_is_refused(outputs, tmp_path, damage):
    out = copy_output(outputs["online"][0], tmp_path / "o")
    teacher = out / "teacher.pt"
    if damage == "missing":
        teacher.unlink()
    elif damage == "altered":
        teacher.write_bytes(teacher.read_bytes()[:-8] + b"\0" * 8)
    else:
        import pickle

        class Payload:
            def __reduce__(self):
                return (print, ("unpickled!",))
        teacher.write_bytes(pickle.dumps({"w": Payload()}))
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["dcompress"]["labels"]["teacher"]["sha256"] = hashlib.sha256(teacher.read_bytes()).hexdigest()
        (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputDataError, match={"missing": "missing or unreadable", "altered": "sha256",
                                              "pickle": "not a usable"}[damage]):
        load(out)


def test_a_newer_label_format_names_the_version(outputs, tmp_path):
    out = copy_output(outputs["views"][0], tmp_path / "o")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["dcompress"]["labels"]["format"] = 3
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputDataError, match="labels format 3 is newer"):
        load(out)


@pytest.mark.parametrize("views, labels, match", [(0, "views", "--label-views must be >= 1"),
                                                   (20_000, "views", "at most 10000"),
                                                   (3, "hard", "apply to --labels views or online")])
def test_label_views_out_of_range_is_a_usage_error(real, tmp_path, views, labels, match):
    with pytest.raises(UsageError, match=match):
        distill(real, tmp_path / "o", labels, views=views)
    assert not (tmp_path / "o").exists()
