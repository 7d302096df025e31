"""MTT / DATM / DD on tiny tensors: exact constant-memory gradients, positive lr, DATM's
start-epoch window, soft-label init and threshold, resume equality, default buffer."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dcompress.augment.dsa import DEFAULT_STRATEGY
from dcompress.checkpoint import Checkpointer
from dcompress.errors import NonFiniteLoss, UsageError
from dcompress.methods.datm import DATM, correct_expert_logits, start_epoch_window
from dcompress.methods.dd import DD, resolve_steps, step_batches
from dcompress.methods.mtt import MTT, PositiveLr, draw_plan, trajectory_loss_fns
from dcompress.nets import build_net
from dcompress.nets.functional import flat_params, forward_flat
from dcompress.train.experts import ExpertConfig, train_experts
from dcompress.train.unroll import unroll
from dcompress.core import RunSpec
from tests.conftest import TEST_DEVICE

SMALL = dict(iterations=3, syn_steps=3, expert_epochs=1, max_start_epoch=2, model="convnet_w16")


@pytest.fixture(scope="module")
def buf(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("buf") / "B"
    train_experts(real, out, num_experts=2, config=ExpertConfig(model="convnet_w16", epochs=3))
    return out


def spec_for(tmp: Path, buf=None, every=0, ipc=1, identity="x") -> RunSpec:
    ckpt = Checkpointer(tmp / "work", {"id": identity}, every=every)
    return RunSpec(ipc=ipc, device=torch.device(TEST_DEVICE), work_dir=ckpt.dir, cache_dir=tmp / "cache", ckpt=ckpt,
                   experts=buf)


def fit(method, real, spec, log=None):
    return method.fit(real, spec, log=log or (lambda e: None))


# -- the unrolled gradient -------------------------------------------------------------------

def _matching_grads(mode: str, soft: bool):
    torch.manual_seed(0)
    net = build_net("convnet_w16", 1, 3, (28, 28), generator=torch.Generator().manual_seed(0)).double()
    theta0 = flat_params(net)
    target = theta0 + 0.01 * torch.randn(theta0.shape, dtype=torch.float64)
    images = torch.randn(6, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    lr = PositiveLr(0.05, torch.device("cpu"), dtype=torch.float64)
    plan = draw_plan(6, 4, 3, DEFAULT_STRATEGY, (1, 28, 28), torch.Generator().manual_seed(3), torch.device("cpu"))
    inner, outer = trajectory_loss_fns(net, theta0, target, images, logits if soft else labels, plan, soft)
    leaves = [images, lr.u] + ([logits] if soft else [])
    return unroll(inner, lambda i: lr.value(), theta0, 3, outer, leaves, mode=mode)


@pytest.mark.parametrize("soft", [False, True])
def test_constant_memory_gradient_equals_full_backprop(soft):
    full, const = _matching_grads("full", soft), _matching_grads("constant", soft)
    assert full.loss == pytest.approx(const.loss, rel=1e-12)
    for a, b in zip(full.grads, const.grads):
        assert a is not None and torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    tesla = _matching_grads("tesla", soft)  # TESLA's formula is an approximation: not silently equal
    cos = F.cosine_similarity(full.grads[0].flatten(), tesla.grads[0].flatten(), dim=0)
    assert cos < 1 - 1e-9


def test_learned_lr_stays_positive_and_first_step_matches_reference():
    lr = PositiveLr(0.01, torch.device("cpu"), dtype=torch.float64)
    opt = torch.optim.SGD([lr.u], lr=lr.step_size(1e-5))
    (lr.value() * 3.0).backward()  # dL/dα = 3
    opt.step()
    assert float(lr.value().detach()) == pytest.approx(0.01 - 1e-5 * 3.0, rel=1e-4)  # the reference's step
    opt.zero_grad()
    (lr.value() * 2000.0).backward()  # the reference's α would become 0.01 - 0.02 < 0
    opt.step()
    assert 0 < float(lr.value().detach()) < 0.005
    opt.zero_grad()
    (lr.value() * 1e12).backward()  # absurd gradient: α would underflow to 0.0 without the clamp
    opt.step()
    lr.clamp_()
    assert float(lr.value().detach()) == pytest.approx(0.01 / PositiveLr.BOUND)


# -- DATM pieces -------------------------------------------------------------------------------

def test_start_epoch_window_grows_then_saturates():
    kw = dict(min_start_epoch=1, current_max_start_epoch=10, max_start_epoch=20, expansion_end_epoch=1000,
              sequential_generation=True)
    assert start_epoch_window(0, **kw) == (1, 10)
    assert start_epoch_window(500, **kw) == (1, 15)
    assert start_epoch_window(999, **kw) == (1, 19)
    assert start_epoch_window(1000, **kw) == (1, 20)
    assert start_epoch_window(5000, **kw) == (1, 20)
    assert start_epoch_window(0, **{**kw, "sequential_generation": False}) == (1, 20)


def test_soft_label_init_averages_only_the_experts_that_are_right():
    net = build_net("convnet_w16", 1, 3, (28, 28), generator=torch.Generator().manual_seed(0))
    thetas = [flat_params(build_net("convnet_w16", 1, 3, (28, 28), generator=torch.Generator().manual_seed(s)))
              for s in range(4)]
    images = torch.randn(12, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        outs = torch.stack([forward_flat(net, t, images) for t in thetas])  # [E, M, K]
    preds = outs.argmax(2)
    labels = preds[0].clone()
    labels[-1] = next(k for k in range(3) if not (preds[:, -1] == k).any()) if len(set(preds[:, -1].tolist())) < 3 \
        else labels[-1]
    logits, info = correct_expert_logits(net, thetas, images, labels)
    for m in range(12):
        right = preds[:, m] == labels[m]
        want = outs[right, m].mean(0) if right.any() else outs[:, m].mean(0)
        torch.testing.assert_close(logits[m], want)
    assert info["label_init_experts"] == 4
    assert info["label_init_no_correct_expert"] == int((~(preds == labels).any(0)).sum())


def test_threshold_skips_updates(real, buf, tmp_path):
    cfg = DATM.Config(**SMALL, threshold=0.0, current_max_start_epoch=2)
    out = fit(DATM(cfg), real, spec_for(tmp_path / "a", buf))
    assert out.info["skipped_updates"] == 3
    assert out.lr == pytest.approx(cfg.lr_teacher)  # nothing was stepped
    kept = fit(DATM(dataclasses.replace(cfg, threshold=1e9)), real, spec_for(tmp_path / "b", buf))
    assert kept.info["skipped_updates"] == 0 and kept.lr != pytest.approx(cfg.lr_teacher)
    assert kept.logits.shape == (3, 3) and kept.label_kind == "learned"
    assert kept.protocol.soft_labels and kept.protocol.use_learned_lr and kept.protocol.batch_size == 128


# -- whole runs ------------------------------------------------------------------------------

def test_mtt_fit_reports_learned_lr_and_memory_choice(real, buf, tmp_path):
    out = fit(MTT(MTT.Config(**SMALL)), real, spec_for(tmp_path, buf))
    assert out.images.shape == (3, 1, 28, 28) and out.lr > 0 and out.logits is None
    assert out.protocol.name == "mtt" and out.protocol.use_learned_lr and out.protocol.model == "convnet_w16"
    assert out.info["memory_choice"] == "auto" and out.info["memory"] in ("full", "constant")
    assert out.info["full_graph_estimate_bytes"] > 0 and out.info["experts"]["experts"] == 2


def test_start_window_beyond_the_experts_is_a_usage_error(real, buf, tmp_path):
    with pytest.raises(UsageError, match="max_start_epoch"):
        fit(MTT(MTT.Config(**{**SMALL, "max_start_epoch": 3})), real, spec_for(tmp_path, buf))


def test_diverging_student_raises_non_finite(real, buf, tmp_path):
    with pytest.raises(NonFiniteLoss):
        fit(MTT(MTT.Config(**{**SMALL, "lr_teacher": 1e12})), real, spec_for(tmp_path, buf))


@pytest.mark.parametrize("method", [MTT(MTT.Config(**{**SMALL, "iterations": 4, "memory": "constant"})),
                                    DATM(DATM.Config(**{**SMALL, "iterations": 4, "threshold": 1e9})),
                                    DD(DD.Config(iterations=4, distill_steps=1, distill_epochs=2, batch_real=8))],
                         ids=["mtt", "datm", "dd"])
def test_resume_reaches_the_uninterrupted_result(method, real, buf, tmp_path):
    ref = fit(method, real, spec_for(tmp_path / "ref", buf, every=2))

    def crash_at_3(ev):
        if ev.get("event") == "iteration" and ev["iteration"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(method, real, spec_for(tmp_path / "run", buf, every=2), log=crash_at_3)
    spec = spec_for(tmp_path / "run", buf, every=2)
    again = fit(method, real, spec)
    assert spec.ckpt.resumed_from == 2
    assert torch.equal(ref.images, again.images)
    assert ref.lr == again.lr and ref.lrs == again.lrs
    if ref.logits is not None:
        assert torch.equal(ref.logits, again.logits)


def test_default_buffer_is_trained_once_then_reused(real, tmp_path):
    cfg = MTT.Config(**{**SMALL, "iterations": 1, "buffer_experts": 1})
    events = []
    fit(MTT(cfg), real, spec_for(tmp_path / "a"), log=events.append)
    first = [e for e in events if e["event"] == "experts_default_buffer"][0]
    assert first["trained_now"] == [0] and Path(first["path"]).parent.parent == tmp_path / "a" / "cache"
    events.clear()
    spec = spec_for(tmp_path / "a", identity="y")
    out = fit(MTT(cfg), real, spec, log=events.append)
    again = [e for e in events if e["event"] == "experts_default_buffer"][0]
    assert again["trained_now"] == [] and again["reused"] == [0] and out.info["experts"]["default"]


# -- DD --------------------------------------------------------------------------------------

def test_dd_ipc_maps_onto_steps():
    assert resolve_steps(10, None) == 10 and resolve_steps(1, None) == 1 and resolve_steps(12, None) == 6
    with pytest.raises(UsageError, match="distill_steps"):
        resolve_steps(1, 10)
    b = step_batches(num_classes=2, ipc=4, steps=2)
    assert [t.tolist() for t in b] == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_dd_learns_positive_per_step_lrs(real, tmp_path):
    out = fit(DD(DD.Config(iterations=2, distill_steps=1, distill_epochs=3, batch_real=16)), real,
              spec_for(tmp_path))
    assert len(out.lrs) == 3 and all(v > 0 for v in out.lrs) and out.lrs != [pytest.approx(0.02)] * 3
    assert out.protocol.name == "dd" and out.protocol.epochs == 300 and out.protocol.aug is None
    assert out.info["replay"]["distill_epochs"] == 3 and out.info["memory"] in ("full", "constant")


def test_evaluation_protocol_uses_the_configured_dsa_strategy():
    from dcompress.methods.datm import DATM
    from dcompress.methods.mtt import MTT

    for cls in (MTT, DATM):
        assert cls(cls.Config(dsa_strategy="crop_flip")).eval_aug() == "crop_flip"
        assert cls(cls.Config(dsa_strategy="none")).eval_aug() is None
