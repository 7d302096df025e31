"""Decoupled pipelines (issue #13): `dcompress teacher`, `--teacher` checks, rded, sre2l, and
top-k soft labels, end to end from the CLI on the tiny shards."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dcompress
from dcompress.cli import app

TEACHER_FAST = ["--epochs", "1"]


def cli(*args: str):
    r = CliRunner().invoke(app, [*map(str, args), "--json"])
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    return r.exit_code, json.loads(lines[0])


def shard_digest(out: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.glob("data-*.tar")))).hexdigest()


def sample_members(out: Path, suffix: str) -> dict[str, bytes]:
    """{member name: bytes} of every shard member ending in `suffix` (e.g. ".json")."""
    import tarfile

    found = {}
    for p in sorted(out.glob("data-*.tar")):
        with tarfile.open(p) as tar:
            for m in tar:
                if m.name.endswith(suffix) and m.name.count(".") == suffix.count("."):
                    found[m.name] = tar.extractfile(m).read()
    return found


@pytest.fixture(scope="module")
def teacher_pt(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t.pt"
    code, rep = cli("teacher", shards["train"], "-o", out, *TEACHER_FAST)
    assert code == 0, rep
    return out


@pytest.fixture(scope="module")
def bn_teacher_pt(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher_bn") / "t.pt"
    code, rep = cli("teacher", shards["train"], "-o", out, "--bn", *TEACHER_FAST)
    assert code == 0 and rep["model"] == "convnetbn_w32", rep
    return out


# ------------------------------------------------------------------------------------ teacher

def test_teacher_command_writes_pair_with_sidecar_and_reuses_it(teacher_pt, shards):
    meta = json.loads(teacher_pt.with_suffix(".json").read_text())
    assert meta["model"] == "convnet_w32" and meta["image_shape"] == [1, 28, 28] and meta["num_classes"] == 3
    assert meta["weights_sha256"] == hashlib.sha256(teacher_pt.read_bytes()).hexdigest()
    assert meta["config"]["epochs"] == 1
    state = torch.load(teacher_pt, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    before = teacher_pt.read_bytes()
    code, rep = cli("teacher", shards["train"], "-o", teacher_pt, *TEACHER_FAST)     # same request: nothing to do
    assert code == 0 and rep["up_to_date"] is True and teacher_pt.read_bytes() == before
    code, rep = cli("teacher", shards["train"], "-o", teacher_pt, "--epochs", "2")   # other request: refused
    assert code == 2 and "--overwrite" in rep["error"] and teacher_pt.read_bytes() == before


def test_teacher_overwrite_retrains_and_reuses_the_cache(shards, tmp_path):
    out = tmp_path / "t.pt"
    code, first = cli("teacher", shards["train"], "-o", out, "--epochs", "2", "--seed", "3")
    assert code == 0 and first["source"] == "trained"
    code, again = cli("teacher", shards["train"], "-o", tmp_path / "u.pt", "--epochs", "2", "--seed", "3")
    assert code == 0 and again["source"] == "cache" and again["weights_sha256"] == first["weights_sha256"]
    code, rep = cli("teacher", shards["train"], "-o", out, "--epochs", "1", "--overwrite")
    assert code == 0 and rep["weights_sha256"] != first["weights_sha256"]
    assert json.loads(out.with_suffix(".json").read_text())["config"]["epochs"] == 1


@pytest.mark.parametrize("case", ["not_pt", "folder"])
def test_teacher_bad_output_locations(shards, tmp_path, case):
    if case == "not_pt":
        code, rep = cli("teacher", shards["train"], "-o", tmp_path / "t.bin", *TEACHER_FAST)
        assert code == 2 and ".pt" in rep["error"]
    else:
        (tmp_path / "t.pt").mkdir()
        code, rep = cli("teacher", shards["train"], "-o", tmp_path / "t.pt", *TEACHER_FAST)
        assert code == 5


@pytest.mark.parametrize("key,value", [("num_classes", 4), ("image_shape", [3, 28, 28]),
                                       ("class_names", ["x", "y", "z"]), ("weights_sha256", "0" * 64)])
def test_teacher_that_does_not_fit_the_input_is_exit_4(teacher_pt, shards, tmp_path, key, value):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(teacher_pt.read_bytes())
    meta = json.loads(teacher_pt.with_suffix(".json").read_text())
    bad.with_suffix(".json").write_text(json.dumps({**meta, key: value}))
    code, rep = cli("distill", shards["train"], "-m", "rded", "--ipc", "1", "--teacher", bad, "-o", tmp_path / "o")
    assert code == 4 and key in json.dumps(rep), rep
    assert not (tmp_path / "o").exists()


def test_teacher_is_used_by_selection_methods(teacher_pt, shards, tmp_path):
    code, rep = cli("distill", shards["train"], "-m", "herding", "--ipc", "2", "--teacher", teacher_pt,
                    "-o", tmp_path / "h")
    assert code == 0 and rep["labels"] == "teacher"
    labels = json.loads((tmp_path / "h" / "manifest.json").read_text())["dcompress"]["labels"]
    assert labels["teacher"]["source"] == "user" and labels["teacher"]["path"] == str(teacher_pt)


# --------------------------------------------------------------------------------------- rded

def test_rded_end_to_end_deterministic_and_trainable(teacher_pt, shards, tmp_path):
    args = ["distill", shards["train"], "-m", "rded", "--ipc", "2", "--teacher", teacher_pt, "--set", "factor=2",
            "--labels", "teacher", "--seed", "5"]            # the method's own relabelling (default: views)
    code, rep = cli(*args, "-o", tmp_path / "a")
    assert code == 0 and rep["samples"] == 6 and rep["labels"] == "teacher", rep
    code, _ = cli(*args, "-o", tmp_path / "b")
    assert code == 0 and shard_digest(tmp_path / "a") == shard_digest(tmp_path / "b")
    code, _ = cli(*args[:-1], "6", "-o", tmp_path / "c")
    assert code == 0 and shard_digest(tmp_path / "a") != shard_digest(tmp_path / "c")
    ds = dcompress.load(tmp_path / "a")
    assert ds.images.shape == (6, 1, 28, 28) and ds.label_kind == "teacher" and ds.protocol.soft_labels
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # each image is 2x2 crops of real images of its own class, named in its provenance
    metas = (tmp_path / "a" / "provenance.jsonl").read_text().splitlines()       # no per-sample .json by default
    assert len(metas) == 6 and all(len(json.loads(m)["crops"]) == 4 for m in metas)
    assert not sample_members(tmp_path / "a", ".json")
    assert not sample_members(tmp_path / "a", ".npy")
    # the stored logits are the teacher's on the stored (PNG) image: no .npy, nothing re-quantised
    from dcompress.train.teacher import load_teacher_net

    net = load_teacher_net("convnet_w32", teacher_pt, (1, 28, 28), 3, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(net(ds.images), ds.logits, atol=2e-2)
    test = dcompress.api.load_real(str(shards["test"]))
    r = dcompress.evaluate(ds, test, runs=1, epochs=3, random_baseline=False)
    assert 0 <= r["compressed"]["mean"] <= 100 and r["samples"] == 6


@pytest.mark.parametrize("method", ["rded", "sre2l"])
def test_decoupled_methods_default_to_view_labels(method, teacher_pt, shards, tmp_path):
    """RDED and SRe2L train their students on a teacher's label of every view: that is their
    default labels (--label-views E views per image; the teacher labels each exact view)."""
    extra = ["--teacher", teacher_pt, "--set", "factor=2"] if method == "rded" else [*SRE2L_FAST]
    code, rep = cli("distill", shards["train"], "-m", method, "--ipc", "2", *extra, "--label-views", "4",
                    "-o", tmp_path / "a")
    assert code == 0 and rep["labels"] == "views", rep
    ds = dcompress.load(tmp_path / "a")
    assert ds.label_kind == "views" and ds.num_views == 4 and ds.protocol.kd
    assert ds.view_logits.shape == (6, 4, 3)


def test_rded_bad_config_and_too_few_crops(teacher_pt, shards, tmp_path):
    code, rep = cli("distill", shards["train"], "-m", "rded", "--ipc", "2", "--teacher", teacher_pt,
                    "--set", "factor=-1", "-o", tmp_path / "a")
    assert code == 2 and "factor" in rep["error"]
    code, rep = cli("distill", shards["train"], "-m", "rded", "--ipc", "1", "--teacher", teacher_pt,
                    "--set", "factor=29", "-o", tmp_path / "c")
    assert code == 2 and "exceeds the image side" in rep["error"]
    code, rep = cli("distill", shards["train"], "-m", "rded", "--ipc", "2", "--teacher", teacher_pt,
                    "--set", "mipc=1", "--set", "num_crop=2", "--set", "factor=2", "-o", tmp_path / "b")
    assert code == 4 and "crops" in rep["error"]


# ------------------------------------------------------------------------------ top-k labels

def test_label_topk_stores_k_logits_and_loads_renormalised(teacher_pt, shards, tmp_path):
    base = ["distill", shards["train"], "-m", "herding", "--ipc", "2", "--teacher", teacher_pt]
    code, full = cli(*base, "-o", tmp_path / "full")
    assert code == 0
    code, rep = cli(*base, "--label-topk", "2", "-o", tmp_path / "k2")
    assert code == 0 and rep["label_topk"] == 2, rep
    b_full, b_k = full["bytes"], rep["bytes"]
    assert b_k["images"] == b_full["images"] > 0
    assert b_k["labels"] == sum(map(len, sample_members(tmp_path / "k2", ".topk.npy").values()))
    assert b_full["labels"] == sum(map(len, sample_members(tmp_path / "full", ".logits.npy").values()))
    assert b_k["shards"] == sum(p.stat().st_size for p in (tmp_path / "k2").glob("data-*.tar"))
    block = json.loads((tmp_path / "k2" / "manifest.json").read_text())["dcompress"]
    assert block["labels"]["topk"] == 2 and block["labels"]["soft"] == "topk.npy" and block["bytes"] == b_k
    assert sample_members(tmp_path / "k2", ".topk.npy") and not sample_members(tmp_path / "k2", ".logits.npy")
    a, k = dcompress.load(tmp_path / "full"), dcompress.load(tmp_path / "k2")
    assert k.label_topk == 2 and torch.equal(a.images, k.images)
    kept = torch.isfinite(k.logits)
    assert kept.sum(1).tolist() == [2] * len(k)
    top2 = a.logits.topk(2, dim=1)
    assert torch.equal(kept.nonzero()[:, 1].view(-1, 2).sort(1).values, top2.indices.sort(1).values)
    assert torch.equal(k.logits[kept].view(-1, 2).sort(1).values, top2.values.sort(1).values)
    assert torch.allclose(k.soft_labels.sum(1), torch.ones(len(k)))
    expect = torch.softmax(top2.values, 1)
    assert torch.allclose(k.soft_labels.gather(1, top2.indices), expect, atol=1e-6)
    test = dcompress.api.load_real(str(shards["test"]))
    r = dcompress.evaluate(k, test, runs=1, epochs=2, random_baseline=False)    # trains on -inf-filled logits
    assert r["compressed"]["runs"] and all(0 <= x <= 100 for x in r["compressed"]["runs"])


@pytest.mark.parametrize("k,word", [("4", "exceeds"), ("0", ">= 1")])
def test_label_topk_out_of_range_is_exit_2(teacher_pt, shards, tmp_path, k, word):
    code, rep = cli("distill", shards["train"], "-m", "herding", "--ipc", "1", "--teacher", teacher_pt,
                    "--label-topk", k, "-o", tmp_path / "o")
    assert code == 2 and word in rep["error"] and not (tmp_path / "o").exists()


def test_topk_records_round_trip_and_reject_foreign_arrays():
    import numpy as np

    from dcompress.io import topk

    row = np.array([0.5, 3.0, -1.0, 3.0, 2.0], dtype=np.float32)
    rec = topk.prune(row, 3)
    assert rec["idx"].tolist() == [1, 3, 4] and rec.dtype["idx"] == np.uint16      # ties: lower index first
    wide = np.random.default_rng(0).normal(size=1000).astype(np.float32)       # where top-k pays: many classes
    from dcompress.io.codecs import encode_npy
    assert len(encode_npy(topk.prune(wide, 10))) < len(encode_npy(wide.astype(np.float16))) / 8
    full = topk.expand(rec, 5, 3)
    assert full.tolist() == [-np.inf, 3.0, -np.inf, 3.0, 2.0]
    for bad in (rec[:2], np.array([(1, 0.0), (1, 1.0), (2, 2.0)], dtype=rec.dtype),
                np.array([(1, 0.0), (9, 1.0), (2, 2.0)], dtype=rec.dtype), np.zeros(3, dtype=np.float32)):
        with pytest.raises(ValueError):
            topk.expand(bad, 5, 3)


def test_stored_form_is_what_a_written_set_reads_back():
    """The fair baselines' teacher logits go through `stored_form`: row by row the same values as
    prune then expand (top-K) or the float16 round trip (full), for arrays and tensors."""
    import numpy as np

    from dcompress.io import topk

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 7)).astype(np.float32) * 5
    logits[0, :3] = 1.25                                                      # ties
    for k in (1, 3, 7):
        got = topk.stored_form(logits, k)
        want = np.stack([topk.expand(topk.prune(row, k), 7, k) for row in logits])
        assert np.array_equal(got, want), k
        assert ((got != -np.inf).sum(1) == k).all()
    full = topk.stored_form(torch.from_numpy(logits), None)
    assert isinstance(full, torch.Tensor) and full.dtype == torch.float32
    assert torch.equal(full, torch.from_numpy(logits).half().float())


# -------------------------------------------------------------------------------------- sre2l

SRE2L_FAST = ["--set", "iterations=20", "--teacher-set", "epochs=1"]


def test_sre2l_end_to_end_on_a_bn_teacher_deterministic(shards, tmp_path):
    args = ["distill", shards["train"], "-m", "sre2l", "--ipc", "2", *SRE2L_FAST, "--set", "cda=true", "--labels",
            "teacher"]
    code, rep = cli(*args, "-o", tmp_path / "a")
    assert code == 0 and rep["samples"] == 6 and rep["labels"] == "teacher", rep
    block = json.loads((tmp_path / "a" / "manifest.json").read_text())["dcompress"]
    assert block["labels"]["teacher"]["model"] == "convnetbn_w32"            # default teacher swapped for BN
    assert block["method"]["teacher_config"]["model"] == "convnetbn_w32"
    assert block["info"]["iterations"] == 20 and block["info"]["cda"] is True
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["event"] == "iteration"]
    assert len(losses) == 20 and sum(losses[-5:]) < sum(losses[:5])         # per-iteration crops: noisy
    code, _ = cli(*args, "-o", tmp_path / "b")
    assert code == 0 and shard_digest(tmp_path / "a") == shard_digest(tmp_path / "b")
    ds = dcompress.load(tmp_path / "a")
    assert ds.images.shape == (6, 1, 28, 28) and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    lo = (0 - ds.mean[0]) / ds.std[0]
    hi = (1 - ds.mean[0]) / ds.std[0]
    assert float(ds.images.min()) >= lo - 1e-5 and float(ds.images.max()) <= hi + 1e-5     # clipped to [0, 1]


def test_sre2l_uses_a_given_bn_teacher(bn_teacher_pt, shards, tmp_path):
    code, rep = cli("distill", shards["train"], "-m", "sre2l", "--ipc", "1", "--teacher", bn_teacher_pt,
                    "--set", "iterations=2", "-o", tmp_path / "a")
    assert code == 0, rep
    teacher = json.loads((tmp_path / "a" / "manifest.json").read_text())["dcompress"]["labels"]["teacher"]
    assert teacher["source"] == "user" and teacher["path"] == str(bn_teacher_pt)


@pytest.mark.parametrize("how", ["file", "set"])
def test_sre2l_refuses_a_teacher_without_batchnorm(teacher_pt, shards, tmp_path, how):
    extra = ["--teacher", teacher_pt] if how == "file" else ["--teacher-set", "model=convnet_w32",
                                                               "--teacher-set", "epochs=1"]
    code, rep = cli("distill", shards["train"], "-m", "sre2l", "--ipc", "1", "--set", "iterations=2", *extra,
                    "-o", tmp_path / "a")
    assert code == 2 and "BatchNorm" in rep["error"] and not (tmp_path / "a").exists()


def test_cda_schedule_lowers_the_crop_bound_from_max_to_min():
    from dcompress.methods.sre2l import crop_lower_bound

    cos = [crop_lower_bound(it, 100, 0.08, 1.0, True, "cosine", 1.0) for it in (0, 50, 99, 100)]
    assert cos[0] == 1.0 and abs(cos[1] - 0.54) < 1e-9 and 0.08 < cos[2] < 0.081 and cos[3] == 0.08
    assert crop_lower_bound(25, 100, 0.08, 1.0, True, "linear", 0.5) == pytest.approx(0.08 + 0.92 * 0.5)
    assert crop_lower_bound(60, 100, 0.08, 1.0, True, "linear", 0.5) == 0.08      # past the milestone
    assert crop_lower_bound(10, 100, 0.08, 1.0, True, "step", 0.5) == 1.0
    assert all(crop_lower_bound(it, 100, 0.08, 1.0, False, "cosine", 1.0) == 0.08 for it in (0, 50))


def test_bn_statistics_loss_per_group_equals_separate_batches():
    from dcompress.methods.sre2l import BNStats
    from dcompress.nets import build_net

    net = build_net("convnetbn_w8", 1, 3, (28, 28), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                                  # non-trivial running statistics
        net.train()
        net(torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    net.eval()
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen: list[torch.Tensor] = []
    taps = [m.register_forward_hook(lambda m, i, o: seen.append(i[0])) for m in bns]
    hooks = BNStats(net, 3)
    with torch.no_grad():
        net(x)
        both = float(hooks.loss(10.0))
        parts = []
        for half in (x[:3], x[3:]):
            seen.clear()
            net(half)
            parts.append(float(hooks.loss(10.0)))
            # the reference's BNFeatureHook, by hand: ||running_var - var|| + ||running_mean - mean||
            ref = sum((10.0 if i == 0 else 1.0) * (
                torch.linalg.vector_norm(m.running_var - t.var(dim=(0, 2, 3), unbiased=False))
                + torch.linalg.vector_norm(m.running_mean - t.mean(dim=(0, 2, 3))))
                for i, (m, t) in enumerate(zip(bns, seen)))
            assert parts[-1] == pytest.approx(float(ref), rel=1e-5)
    hooks.close()
    for t in taps:
        t.remove()
    assert len(bns) == 3 and both == pytest.approx(sum(parts), rel=1e-5)


def test_teacher_python_api_and_network_choice(real, tmp_path):
    from dcompress.train.teacher_out import auto_model, bn_variant

    rep = dcompress.teacher(None, out=tmp_path / "t.pt", model="convnet_w8", bn=True, epochs=1, real=real)
    assert rep["status"] == "ok" and rep["model"] == "convnetbn_w8" and (tmp_path / "t.json").is_file()
    assert auto_model((3, 32, 32), False) == "convnet_w32" and auto_model((3, 32, 32), True) == "convnetbn_w32"
    assert auto_model((3, 224, 224), False) == auto_model((3, 96, 96), True) == "resnet18"
    assert bn_variant("convnet_d4_w64_in") == "convnetbn_d4_w64" and bn_variant("resnet18") == "resnet18"
    with pytest.raises(dcompress.errors.UsageError):
        bn_variant("mlp")


def test_rded_label_modes(teacher_pt, shards, tmp_path):
    base = ["distill", shards["train"], "-m", "rded", "--ipc", "1", "--teacher", teacher_pt]
    code, rep = cli(*base, "--labels", "learned", "-o", tmp_path / "l")
    assert code == 2 and "does not learn labels" in rep["error"]
    code, rep = cli(*base, "--labels", "hard", "-o", tmp_path / "h")
    assert code == 0 and rep["labels"] == "hard"
    info = json.loads((tmp_path / "h" / "manifest.json").read_text())["dcompress"]["info"]
    assert info["factor"] == 1 and info["crops_per_image"] == 1          # 28 px: factor 1, as the CIFAR scripts
    assert dcompress.load(tmp_path / "h").logits.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
