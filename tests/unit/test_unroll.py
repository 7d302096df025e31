"""Unrolled-gradient engine: the exact adjoint equals full BPTT, both equal finite differences,
the TESLA formula is measurably different (so the modes cannot be swapped silently)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dcompress.errors import NonFiniteLoss
from dcompress.train.unroll import (MODES, UnrollResult, choose_mode, constant_bytes_estimate,
                                    full_graph_bytes_estimate, step_graph_bytes, unroll)

D = torch.float64
N_IN, N_HID, N_CLS, N_SYN = 5, 7, 3, 6
SHAPES = [(N_HID, N_IN), (N_HID,), (N_CLS, N_HID), (N_CLS,)]
N_PARAMS = sum(math.prod(s) for s in SHAPES)


def mlp(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """2-layer tanh MLP on a flat θ (tanh: smooth, so finite differences are clean)."""
    w1, b1, w2, b2 = torch.split(theta, [math.prod(s) for s in SHAPES])
    h = torch.tanh(x @ w1.view(SHAPES[0]).T + b1)
    return h @ w2.view(SHAPES[2]).T + b2


def soft_ce(logits, target_logits):
    return -(torch.softmax(target_logits, 1) * torch.log_softmax(logits, 1)).sum(1).mean()


def make_problem(seed: int = 0, steps: int = 3, per_step_lr: bool = False, outer: str = "mtt"):
    """Leaves X (inputs), Y (soft-label logits), raw lr (softplus → α ≈ 0.1)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N_SYN, N_IN, generator=g, dtype=D).requires_grad_(True)
    Y = (2 * torch.randn(N_SYN, N_CLS, generator=g, dtype=D)).requires_grad_(True)
    raw0 = math.log(math.expm1(0.1))
    raw = torch.full((steps,) if per_step_lr else (), raw0, dtype=D)
    if per_step_lr:
        raw = raw + 0.3 * torch.randn(steps, generator=g, dtype=D)
    raw.requires_grad_(True)
    theta0 = torch.randn(N_PARAMS, generator=g, dtype=D)
    target = theta0 + 0.5 * torch.randn(N_PARAMS, generator=g, dtype=D)
    # per-step minibatches drawn up front (the determinism contract)
    batches = [torch.randperm(N_SYN, generator=g)[:4] for _ in range(steps)]
    x_real = torch.randn(16, N_IN, generator=g, dtype=D)
    y_real = torch.randint(0, N_CLS, (16,), generator=g)

    def inner(theta, i):
        idx = batches[i]
        return soft_ce(mlp(theta, X[idx]), Y[idx])

    def lr_fn(i):
        return F.softplus(raw[i] if per_step_lr else raw)

    def outer_loss(theta):
        if outer == "mtt":
            return ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()
        return F.cross_entropy(mlp(theta, x_real), y_real)

    return dict(inner_loss=inner, lr_fn=lr_fn, theta0=theta0, steps=steps, outer_loss=outer_loss,
                leaves=[X, Y, raw])


def run(p, mode):
    return unroll(p["inner_loss"], p["lr_fn"], p["theta0"], p["steps"], p["outer_loss"], p["leaves"], mode=mode)


def flat(res: UnrollResult) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in res.grads])


def assert_close_grads(a: UnrollResult, b: UnrollResult, rtol: float):
    for k, (ga, gb) in enumerate(zip(a.grads, b.grads)):
        err = (ga - gb).norm() / gb.norm()
        assert err < rtol, f"leaf {k}: relative error {err:.3g}"


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_constant_equals_full():
    p = make_problem()
    full, const = run(p, "full"), run(p, "constant")
    assert all(g is not None for g in full.grads)
    assert_close_grads(const, full, 1e-10)
    assert torch.allclose(const.theta_final, full.theta_final, rtol=0, atol=1e-13)
    assert const.loss == pytest.approx(full.loss, rel=1e-13)
    assert not full.theta_final.requires_grad and full.info["mode"] == "full"
    assert len(const.info["inner_losses"]) == 3 and const.info["recompute_max_rel_diff"] == 0.0


@pytest.mark.parametrize("mode", ["full", "constant"])
def test_matches_central_finite_differences(mode):
    p = make_problem(seed=1)
    res = run(p, mode)
    g = torch.Generator().manual_seed(2)
    eps = 1e-6
    for k, leaf in enumerate(p["leaves"]):
        coords = torch.randint(0, leaf.numel(), (3,), generator=g).unique()
        for c in coords.tolist():
            with torch.no_grad():
                v = leaf.view(-1)
                v[c] += eps
                up = run(p, "full").loss
                v[c] -= 2 * eps
                down = run(p, "full").loss
                v[c] += eps
            fd = (up - down) / (2 * eps)
            assert res.grads[k].reshape(-1)[c].item() == pytest.approx(fd, rel=1e-6, abs=1e-9), (k, c)


def test_tesla_is_close_but_not_exact():
    p = make_problem()
    full, tesla = flat(run(p, "full")), flat(run(p, "tesla"))
    c = cos(full, tesla)
    rel = float((tesla - full).norm() / full.norm())
    assert 0.9 < c < 0.9999, c
    assert rel > 1e-4, rel


def test_tesla_equals_mtt_closed_form():
    """Single α, MTT loss: our frozen-λ loop reproduces TESLA's closed form for α's gradient:
    dL/dα = −2 G·(θ0 − αG − θ*) / ‖θ0 − θ*‖², G = Σ g_i."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(N_SYN, N_IN, generator=g, dtype=D)
    Y = torch.randn(N_SYN, N_CLS, generator=g, dtype=D)
    alpha = torch.tensor(0.1, dtype=D, requires_grad=True)
    theta0 = torch.randn(N_PARAMS, generator=g, dtype=D)
    target = theta0 + 0.5 * torch.randn(N_PARAMS, generator=g, dtype=D)
    inner = lambda th, i: soft_ce(mlp(th, X), Y)  # noqa: E731
    outer = lambda th: ((th - target) ** 2).sum() / ((theta0 - target) ** 2).sum()  # noqa: E731
    res = unroll(inner, lambda i: alpha, theta0, 4, outer, [alpha], mode="tesla")
    G = (theta0 - res.theta_final) / alpha.detach()
    closed = -2 * G @ (theta0 - alpha.detach() * G - target) / ((theta0 - target) ** 2).sum()
    assert res.grads[0].item() == pytest.approx(closed.item(), rel=1e-10)


def test_per_step_lrs_constant_equals_full():
    """DD style: one learnable lr per step, outer loss = CE on a real batch."""
    p = make_problem(seed=4, steps=5, per_step_lr=True, outer="ce")
    full, const = run(p, "full"), run(p, "constant")
    assert full.grads[2].shape == (5,)
    assert_close_grads(const, full, 1e-10)


def test_one_step_tesla_is_exact():
    p = make_problem(seed=5, steps=1)
    full, const, tesla = run(p, "full"), run(p, "constant"), run(p, "tesla")
    for gt, gc in zip(tesla.grads, const.grads):
        assert torch.equal(gt, gc)  # same code path with λ = λ_N
    assert_close_grads(tesla, full, 1e-13)


@pytest.mark.parametrize("mode", MODES)
def test_nan_raises_non_finite(mode):
    p = make_problem(seed=6)
    with torch.no_grad():
        p["leaves"][0][2, 1] = float("nan")
    with pytest.raises(NonFiniteLoss, match="inner loss at unrolled step"):
        run(p, mode)


@pytest.mark.parametrize("mode", MODES)
def test_diverging_outer_loss_raises(mode):
    p = make_problem(seed=6)
    p["outer_loss"] = lambda th: (th ** 2).sum() * float("inf")
    with pytest.raises(NonFiniteLoss, match="outer loss"):
        run(p, mode)


def test_unused_leaf_is_none_and_outer_leaf_dependence():
    p = make_problem(seed=7)
    X, Y, raw = p["leaves"]
    unused = torch.zeros(2, dtype=D, requires_grad=True)
    base = p["outer_loss"]
    p["outer_loss"] = lambda th: base(th) + (Y ** 2).mean()  # direct dependence on a leaf
    p["leaves"] = [X, unused, Y, raw]
    full, const = run(p, "full"), run(p, "constant")
    assert full.grads[1] is None and const.grads[1] is None
    for a, b in zip(const.grads, full.grads):
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_nondeterministic_inner_loss_is_caught():
    p = make_problem(seed=8)
    g = torch.Generator().manual_seed(0)
    inner = p["inner_loss"]
    p["inner_loss"] = lambda th, i: inner(th, i) * (1 + 0.1 * torch.rand((), generator=g, dtype=D))
    with pytest.raises(ValueError, match="deterministic"):
        run(p, "constant")


def test_bad_arguments():
    p = make_problem()
    with pytest.raises(ValueError, match="mode"):
        run(p, "bptt")
    p["leaves"] = [torch.zeros(3, dtype=D)]
    with pytest.raises(ValueError, match="requires_grad"):
        run(p, "full")


def test_conv_net_double_backward_constant_equals_full():
    """Tiny conv net through torch.func.functional_call: conv + GroupNorm double backward."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GroupNorm(4, 4), torch.nn.Tanh(),
                              torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)).to(D)
    names = [n for n, _ in net.named_parameters()]
    shapes = [q.shape for _, q in net.named_parameters()]
    sizes = [q.numel() for _, q in net.named_parameters()]
    g = torch.Generator().manual_seed(9)
    theta0 = torch.cat([0.5 * torch.randn(n, generator=g, dtype=D) for n in sizes])
    X = torch.randn(4, 1, 8, 8, generator=g, dtype=D).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0])
    alpha = torch.tensor(0.2, dtype=D, requires_grad=True)
    target = theta0 + 0.3 * torch.randn(theta0.numel(), generator=g, dtype=D)

    def forward(theta, x):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return torch.func.functional_call(net, params, (x,))

    inner = lambda th, i: F.cross_entropy(forward(th, X[i % 2 * 2:(i % 2 + 1) * 2]), y[i % 2 * 2:(i % 2 + 1) * 2])  # noqa: E731
    outer = lambda th: ((th - target) ** 2).sum() / ((theta0 - target) ** 2).sum()  # noqa: E731
    res = {m: unroll(inner, lambda i: alpha, theta0, 3, outer, [X, alpha], mode=m) for m in MODES}
    assert_close_grads(res["constant"], res["full"], 1e-10)
    assert cos(flat(res["tesla"]), flat(res["full"])) < 1 - 1e-8
    # one finite-difference check on a pixel
    eps, c = 1e-6, 37
    with torch.no_grad():
        X.view(-1)[c] += eps
        up = unroll(inner, lambda i: alpha, theta0, 3, outer, [X, alpha]).loss
        X.view(-1)[c] -= 2 * eps
        down = unroll(inner, lambda i: alpha, theta0, 3, outer, [X, alpha]).loss
        X.view(-1)[c] += eps
    assert res["constant"].grads[0].view(-1)[c].item() == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-10)


def test_memory_model_and_choose_mode():
    p = make_problem()
    b = step_graph_bytes(p["inner_loss"], p["lr_fn"], p["theta0"])
    assert b > N_PARAMS * 8  # at least g_i is kept per step
    assert full_graph_bytes_estimate(b, 40) == 40 * b
    assert constant_bytes_estimate(b, 40, N_PARAMS, 8) == b + 41 * N_PARAMS * 8
    assert choose_mode(10 * 2**30, 40 * 2**30) == "full"
    assert choose_mode(10 * 2**30, 12 * 2**30) == "constant"  # fits, but without headroom
    assert choose_mode(10 * 2**30, 5 * 2**30) == "constant"
