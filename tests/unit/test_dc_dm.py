"""DC, DSA and DM on tiny tensors: distances, losses, gradients, Siamese augmentation, resume, NaN guard."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from dcompress.checkpoint import Checkpointer
from dcompress.errors import NonFiniteLoss, UsageError
from dcompress.methods import dc as dc_mod
from dcompress.methods import dm as dm_mod
from dcompress.methods.dc import dc_loops, distance_wb, match_loss
from dcompress.core import RealData, RunSpec
from tests.conftest import TEST_DEVICE, tiny_real

TINY = "convnet_w16"


@pytest.fixture(scope="module")
def real() -> RealData:
    return tiny_real()


def spec_for(tmp_path, ipc=2, every=0, progress=None, name="run") -> RunSpec:
    ckpt = Checkpointer(tmp_path / name, {"test": name}, every=every) if every else None
    return RunSpec(ipc=ipc, device=torch.device(TEST_DEVICE), work_dir=tmp_path, ckpt=ckpt, progress=progress)


def fit(method_cls, real, spec, **cfg):
    m = method_cls(method_cls.Config(**cfg))
    return m.fit(real, spec, log=lambda e: None)


DM_TINY = dict(model=TINY, batch_real=6)
DC_TINY = dict(model=TINY, batch_real=6, batch_train=4, outer_loop=2, inner_loop=1)


# ---------------------------------------------------------------------------------------------- distances

def test_distance_wb_ignores_1d_params_and_matches_hand_value():
    assert float(distance_wb(torch.randn(5), torch.randn(5))) == 0.0
    gr = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    gs = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    # row 0: 1 − 3/(3 + 1e-6); row 1: orthogonal → 1
    assert float(distance_wb(gr, gs)) == pytest.approx(1 - 3 / (3 + 1e-6) + 1.0, abs=1e-7)
    # conv weights [out, in, h, w] are compared per output channel; 3-D tensors per leading dim
    conv_r, conv_s = gr.reshape(2, 1, 1, 2), gs.reshape(2, 1, 2, 1)
    assert float(distance_wb(conv_r, conv_s)) == pytest.approx(float(distance_wb(gr, gs)))
    assert float(distance_wb(gr.reshape(2, 1, 2), gs.reshape(2, 2, 1))) == pytest.approx(float(distance_wb(gr, gs)))
    bias_r, bias_s = torch.randn(2), torch.randn(2)
    assert float(match_loss([gs, bias_s], [gr, bias_r], "ours")) == pytest.approx(float(distance_wb(gr, gs)))


def test_mse_and_cos_are_global_over_all_params():
    g_r = [torch.randn(4, 3), torch.randn(4)]
    g_s = [torch.randn(4, 3), torch.randn(4)]
    r = torch.cat([g.flatten() for g in g_r])
    s = torch.cat([g.flatten() for g in g_s])
    assert float(match_loss(g_s, g_r, "mse")) == pytest.approx(float(((r - s) ** 2).sum()), rel=1e-6)
    cos = torch.nn.functional.cosine_similarity(r, s, dim=0)
    assert float(match_loss(g_s, g_r, "cos")) == pytest.approx(float(1 - cos), abs=1e-5)
    with pytest.raises(UsageError, match="dis_metric"):
        match_loss(g_s, g_r, "l1")


def test_dc_loops_table_and_rule():
    assert dc_loops(1) == (1, 1) and dc_loops(10) == (10, 50) and dc_loops(30) == (30, 20) and dc_loops(50) == (50, 10)
    assert dc_loops(2) == (2, 50) and dc_loops(25) == (25, 20) and dc_loops(100) == (50, 10)
    assert dc_loops(10, outer_loop=3) == (3, 50) and dc_loops(7, inner_loop=2) == (7, 2)


# ---------------------------------------------------------------------------------------------- DM

def _dm_setup(real, ipc, strategy, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = dm_mod.frozen_net(TINY, real, g, torch.device("cpu"))
    draws = [dm_mod.draw_class(real, c, 5, strategy, g, torch.device("cpu")) for c in range(real.num_classes)]
    return net, draws


def test_dm_loss_zero_when_syn_is_the_real_batch(real):
    net, draws = _dm_setup(real, 5, None)
    images = torch.cat([real.get(d.real_idx) for d in draws]).requires_grad_(True)
    for loss_fn in (dm_mod.dm_loss_per_class, dm_mod.dm_loss_batched):
        assert loss_fn(net, real, images, 5, draws, backward=False) == pytest.approx(0.0, abs=1e-8)


def test_dm_gradient_flows_and_batched_equals_per_class(real):
    from dcompress.augment import dsa

    net, draws = _dm_setup(real, 2, dsa.DEFAULT_STRATEGY, seed=3)
    base = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    out = {}
    for name, fn in (("per_class", dm_mod.dm_loss_per_class), ("batched", dm_mod.dm_loss_batched)):
        images = base.clone().requires_grad_(True)
        out[name] = (fn(net, real, images, 2, draws), images.grad.clone())
    (l1, g1), (l2, g2) = out["per_class"], out["batched"]
    assert l1 > 0 and torch.isfinite(g1).all() and g1.abs().sum() > 0
    assert all(float(g1[i * 2:(i + 1) * 2].abs().sum()) > 0 for i in range(3))   # every class gets a gradient
    assert l2 == pytest.approx(l1, rel=1e-5)
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-6)
    # no gradient reaches the frozen network
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())


def test_dm_fit_shapes_labels_protocol(real, tmp_path):
    cs = fit(dm_mod.DM, real, spec_for(tmp_path), iterations=2, **DM_TINY)
    assert cs.images.shape == (6, 1, 28, 28) and cs.images.dtype == torch.float32 and not cs.images.requires_grad
    assert cs.labels.tolist() == [0, 0, 1, 1, 2, 2] and cs.logits is None and cs.synthetic
    assert [s["slot"] for s in cs.sources] == [0, 1, 0, 1, 0, 1]
    assert all(s["init_source_key"] in real.keys for s in cs.sources)
    assert cs.protocol.name == "dm" and cs.protocol.epochs == 1000 and cs.protocol.aug == dm_mod.dsa.DEFAULT_STRATEGY
    assert cs.protocol.model == TINY
    init = fit(dm_mod.DM, real, spec_for(tmp_path), iterations=0, **DM_TINY)
    assert not torch.equal(init.images, cs.images)
    assert fit(dm_mod.DM, real, spec_for(tmp_path), iterations=0, pix_init="noise", **DM_TINY).sources[0]["init_source_key"] is None


def test_dm_batched_false_with_bn_model_is_a_usage_error(real, tmp_path):
    with pytest.raises(UsageError, match="BatchNorm"):
        fit(dm_mod.DM, real, spec_for(tmp_path), iterations=1, model="convnetbn", batch_real=2, batched=False)


def test_bad_strategy_is_a_usage_error():
    with pytest.raises(UsageError, match="dsa_strategy"):
        dm_mod.DM(dm_mod.DM.Config(dsa_strategy="color_warp"))
    with pytest.raises(UsageError, match="--method dc"):
        dc_mod.DSA(dc_mod.DSA.Config(dsa_strategy="none"))


# ---------------------------------------------------------------------------------------------- DC / DSA

def test_dc_one_iteration_changes_images(real, tmp_path):
    before = fit(dc_mod.DC, real, spec_for(tmp_path), iterations=0, **DC_TINY)
    after = fit(dc_mod.DC, real, spec_for(tmp_path), iterations=1, **DC_TINY)
    assert after.images.shape == (6, 1, 28, 28) and after.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.isfinite(after.images).all() and not torch.equal(before.images, after.images)
    assert all(s["init_source_key"] is None for s in after.sources)          # DC default init: noise
    assert after.protocol.name == "dc" and after.protocol.epochs == 300 and after.protocol.aug is None
    assert after.info["outer_loop"] == 2 and after.info["inner_loop"] == 1
    for metric in ("mse", "cos"):
        assert torch.isfinite(fit(dc_mod.DC, real, spec_for(tmp_path), iterations=1, dis_metric=metric,
                                  **DC_TINY).images).all()


def test_dsa_siamese_real_and_syn_share_one_transform_per_class(real, tmp_path, monkeypatch):
    dsa = dc_mod.dsa
    made, applied, augmented = [], [], []
    make_params, apply, augment = dsa.make_params, dsa.apply, dsa.augment

    def spy_make(strategy, batch, shape, **kw):     # (augment() calls it too, non-siamese)
        p = make_params(strategy, batch, shape, **kw)
        if p.siamese:
            made.append(p)
        return p

    def spy_apply(x, params):
        if params.siamese:
            applied.append((params, x.detach().clone()))
        return apply(x, params)

    def spy_augment(x, strategy, **kw):
        augmented.append(kw.get("siamese", False))
        return augment(x, strategy, **kw)

    monkeypatch.setattr(dsa, "make_params", spy_make)
    monkeypatch.setattr(dsa, "apply", spy_apply)
    monkeypatch.setattr(dsa, "augment", spy_augment)
    cs = fit(dc_mod.DSA, real, spec_for(tmp_path), iterations=1, **DC_TINY)
    assert cs.protocol.name == "dsa" and cs.protocol.epochs == 1000 and cs.protocol.aug == dsa.DEFAULT_STRATEGY
    # outer_loop 2 × 3 classes: one Siamese draw per class per matching step, each applied to real then syn
    assert len(made) == 6 and len(applied) == 12
    for k, params in enumerate(made):
        (p_real, x_real), (p_syn, x_syn) = applied[2 * k], applied[2 * k + 1]
        assert p_real is params and p_syn is params
        assert x_real.shape[0] == 6 and x_syn.shape[0] == 2
        # the same transform: applying to the concatenation equals applying to each part
        joint = apply(torch.cat([x_real, x_syn]), params)
        torch.testing.assert_close(joint, torch.cat([apply(x_real, params), apply(x_syn, params)]))
    assert len({id(p) for p in made}) == 6                                # each class its own draw
    assert augmented and not any(augmented)                                  # inner loop: per-sample aug


# ---------------------------------------------------------------------------------------------- resume / NaN

class Crash(Exception):
    pass


def crash_at(k):
    def progress(done, total, desc):
        if done == k:
            raise Crash
    return progress


@pytest.mark.parametrize("method_cls,cfg,n,k", [(dm_mod.DM, dict(DM_TINY, iterations=5), 5, 2),
                                                (dc_mod.DC, dict(DC_TINY, iterations=3), 3, 2),
                                                (dc_mod.DSA, dict(DC_TINY, iterations=3), 3, 2)])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(real, tmp_path, method_cls, cfg, n, k):
    straight = fit(method_cls, real, spec_for(tmp_path, every=1, name="straight"), **cfg)
    crashed = spec_for(tmp_path, every=k, progress=crash_at(k), name="crashed")
    with pytest.raises(Crash):
        fit(method_cls, real, crashed, **cfg)
    assert crashed.ckpt.load()["iteration"] == k
    resumed = fit(method_cls, real, replace(crashed, progress=None), **cfg)
    assert resumed.info["resumed_from"] == k
    assert torch.equal(resumed.images, straight.images)
    assert [s["init_source_key"] for s in resumed.sources] == [s["init_source_key"] for s in straight.sources]


@pytest.mark.parametrize("every", [1, 2])
def test_non_finite_loss_raises_and_keeps_last_good_checkpoint(real, tmp_path, every):
    spec = spec_for(tmp_path, every=every, name=f"nan{every}")
    fit(dm_mod.DM, real, spec, iterations=2, **DM_TINY)
    good = spec.ckpt.load()
    assert good["iteration"] == 2
    with pytest.raises(NonFiniteLoss, match=r"iteration (\d+)") as e:   # lr_img=inf is refused by the config
        fit(dm_mod.DM, real, spec, iterations=6, lr_img=1e30, **DM_TINY)
    failed = int(re.search(r"iteration (\d+)", str(e.value)).group(1))
    assert failed in (3, 4)
    kept = spec.ckpt.load()
    assert kept["iteration"] == ((failed - 1) // every) * every >= 2      # the last save before the failure
    assert torch.isfinite(kept["images"]).all()
    assert kept["iteration"] > 2 or torch.equal(kept["images"], good["images"])


def test_nan_init_raises_at_the_first_iteration(real, tmp_path, monkeypatch):
    def nan_init(real, classes, ipc, init, seed, device):
        c, h, w = real.image_shape
        n = len(list(classes)) * ipc
        return torch.full((n, c, h, w), float("nan")), [None] * n

    monkeypatch.setattr(dc_mod, "init_images_by_class", nan_init)
    monkeypatch.setattr(dm_mod, "init_images_by_class", nan_init)
    for cls, cfg in ((dm_mod.DM, DM_TINY), (dc_mod.DC, DC_TINY)):
        spec = spec_for(tmp_path, every=1, name=f"naninit-{cls.info.name}")
        with pytest.raises(NonFiniteLoss, match="at iteration 1 "):
            fit(cls, real, spec, iterations=3, **cfg)
        assert spec.ckpt.load() is None


@pytest.mark.parametrize("batched", [False, True])
def test_dm_classes_in_any_subset_give_identical_per_class_images(real, batched, monkeypatch):
    """Derived seeds: a class's DM images depend on (seed, class) only, not on which classes run
    beside it: the basis of splitting classes over processes. Each simulated rank of 2 and of 3
    (`dist.ClassSplit` of its block of classes) gives the one-process rows of its classes."""
    from dcompress import dist

    cfg = dm_mod.DM.Config(iterations=3, **{**DM_TINY, "batched": batched})
    spec = RunSpec(ipc=2, seed=4)
    full = fit(dm_mod.DM, real, spec, **{**DM_TINY, "iterations": 3, "batched": batched})
    for world in (2, 3):
        for rank in range(world):
            monkeypatch.setattr(dist, "rank", lambda: rank)
            monkeypatch.setattr(dist, "world", lambda: world)
            split = dist.ClassSplit(real.num_classes, 2)
            part = dm_mod.DM(cfg).fit(real, spec, log=lambda e: None)
            assert torch.equal(part.images, full.images[split.lo:split.hi])
            assert [s["init_source_key"] for s in part.sources] == \
                [s["init_source_key"] for s in full.sources][split.lo:split.hi]
    monkeypatch.undo()
    other = fit(dm_mod.DM, real, RunSpec(ipc=2, seed=5), **{**DM_TINY, "iterations": 3, "batched": batched})
    assert not torch.equal(other.images[0:2], full.images[0:2])

# ---------------------------------------------------------------------------------------------- class split

def test_class_split_in_one_process_is_the_identity(real):
    from dcompress import dist

    split = dist.ClassSplit(real.num_classes, 2, "dm")
    assert (split.classes, split.lo, split.hi, split.slots) == ([0, 1, 2], 0, 6, False)
    x, keys = torch.randn(6, 1, 2, 2), list("abcdef")
    made = []
    got, got_keys = split.initial(lambda classes: made.append(classes) or (x, keys))
    assert made == [[0, 1, 2]] and got is x and got_keys is keys
    assert [split.rows_of(c) for c in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert split.real_part(1, 7) == slice(0, 7) and all(split.counts(c) for c in range(3))
    assert split.loss(1.5, [torch.tensor(1.0)]) == 1.5 and split.info() == {}
    assert torch.equal(split.gather(x), x) and split.gather_keys(keys) == keys


@pytest.mark.parametrize("world,ipc", [(2, 2), (3, 2), (4, 3), (5, 3), (6, 3)])
def test_class_split_ranks_cover_every_row_and_real_image_once(real, world, ipc):
    """Simulated ranks: the row blocks tile the one-process rows in rank order, their initial
    rows are the one-process initial rows (byte for byte), every class's real batch is split
    over the ranks sharing it, and one of them counts the class."""
    from dcompress import dist
    from dcompress.methods.base import init_images_by_class

    n_cls = 2 if world > 3 else real.num_classes
    by_class = lambda classes: init_images_by_class(real, classes, ipc, "real", 7, torch.device("cpu"))  # noqa: E731
    full, full_keys = by_class(range(n_cls))
    splits = [dist.ClassSplit(n_cls, ipc, "dm", at=(r, world)) for r in range(world)]
    assert all(s.slots == (world > n_cls) for s in splits)
    assert [(s.lo, s.hi) for s in splits] == list(zip([0] + [s.hi for s in splits[:-1]], [s.hi for s in splits]))
    assert splits[-1].hi == n_cls * ipc
    real_seen = {c: [] for c in range(n_cls)}
    for s in splits:
        rows, keys = s.initial(by_class)
        assert torch.equal(rows, full[s.lo:s.hi]) and keys == full_keys[s.lo:s.hi]
        for c in s.classes:
            at = s.rows_of(c)
            assert torch.equal(rows[at], full[max(s.lo, c * ipc):min(s.hi, (c + 1) * ipc)])
            real_seen[c] += list(range(13))[s.real_part(c, 13)]
    assert all(sorted(v) == list(range(13)) for v in real_seen.values())
    assert all(sum(s.counts(c) for s in splits if c in s.classes) == 1 for c in range(n_cls))


def test_class_split_refuses_more_ranks_than_work():
    from dcompress import dist

    with pytest.raises(UsageError, match="--method dm splits image slots over processes: 4 image slots"):
        dist.ClassSplit(2, 2, "dm", at=(0, 5))
    with pytest.raises(UsageError, match="--method dq splits classes over processes: 2 classes"):
        dist.ClassSplit(2, 1, "dq", slots=False, at=(0, 3))
