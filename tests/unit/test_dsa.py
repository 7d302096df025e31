"""dcompress.augment.dsa: siamese sharing, mode 'S', determinism, per-family numerics, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from dcompress.augment import dsa
from dcompress.augment.dsa import (DEFAULT_STRATEGY, DIGIT_STRATEGY, FAMILIES, AugOp, AugParams, DSAConfig, apply,
                                   augment, make_params, parse_strategy)

SHAPES = [(1, 28, 28), (3, 32, 32)]
ALL_M = DSAConfig(mode="M")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int, shape=(3, 32, 32), seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(b, *shape, generator=gen(seed), dtype=dtype)


def one(name: str, value, shape=(1, 4, 4)) -> AugParams:
    """Hand-made siamese parameters of a single op (one row, any batch)."""
    return AugParams((name,), (AugOp(name, torch.as_tensor(value)),), 1, shape, True)


# ----------------------------------------------------------------------------------------------
# Strategies and parameters


def test_parse_strategy():
    assert parse_strategy(DEFAULT_STRATEGY) == ["color", "crop", "cutout", "flip", "scale", "rotate"]
    assert "flip" not in parse_strategy(DIGIT_STRATEGY)
    assert parse_strategy(None) == parse_strategy("") == parse_strategy("none") == []
    with pytest.raises(ValueError, match="'blur'"):
        parse_strategy("color_blur_crop")
    with pytest.raises(ValueError, match="mode"):
        DSAConfig(mode="X")


def test_mode_s_picks_exactly_one_family_per_call():
    g, seen = gen(), set()
    for _ in range(60):
        p = make_params(DEFAULT_STRATEGY, 4, (1, 28, 28), generator=g)
        assert len(p.families) == 1
        assert tuple(op.name for op in p.ops) == FAMILIES[p.families[0]]
        seen.add(p.families[0])
    assert seen == set(FAMILIES)                      # uniform over the list: all six show up
    m = make_params(DEFAULT_STRATEGY, 4, (1, 28, 28), generator=g, config=ALL_M)
    assert m.families == tuple(FAMILIES) and len(m.ops) == 8


def test_siamese_params_are_one_row_and_independent_of_batch_size():
    a = make_params(DEFAULT_STRATEGY, 256, (1, 28, 28), generator=gen(5), siamese=True, config=ALL_M)
    b = make_params(DEFAULT_STRATEGY, 10, (1, 28, 28), generator=gen(5), siamese=True, config=ALL_M)
    for oa, ob in zip(a.ops, b.ops, strict=True):
        assert oa.name == ob.name and oa.value.shape[0] == 1 and torch.equal(oa.value, ob.value)
    per_sample = make_params(DEFAULT_STRATEGY, 10, (1, 28, 28), generator=gen(5), config=ALL_M)
    assert all(op.value.shape[0] == 10 for op in per_sample.ops)


@pytest.mark.parametrize("shape", SHAPES)
def test_siamese_same_transform_on_real_and_synthetic_batches(shape):
    params = make_params(DEFAULT_STRATEGY, 256, shape, generator=gen(2), siamese=True, config=ALL_M)
    img = images(1, shape)
    real, syn = apply(img.expand(256, *shape), params), apply(img.expand(10, *shape), params)
    assert real.shape == (256, *shape) and syn.shape == (10, *shape)
    torch.testing.assert_close(real, real[:1].expand_as(real), rtol=0, atol=0)
    torch.testing.assert_close(syn, real[:10], rtol=0, atol=0)
    assert not torch.equal(syn[0], img[0])


def test_per_sample_params_differ_across_the_batch_and_check_batch_size():
    x = images(1).expand(8, 3, 32, 32)
    p = make_params("crop_scale", 8, (3, 32, 32), generator=gen(), config=ALL_M)
    y = apply(x, p)
    assert len({tuple(y[i].flatten()[:50].tolist()) for i in range(8)}) > 1
    with pytest.raises(ValueError, match="batch of 8"):
        apply(images(4), p)
    with pytest.raises(ValueError, match="32x32"):
        apply(images(8, (3, 28, 28)), p)


def test_determinism_and_global_rng_untouched():
    x, state = images(6), torch.random.get_rng_state()
    a = augment(x, DEFAULT_STRATEGY, generator=gen(7), config=ALL_M)
    b = augment(x, DEFAULT_STRATEGY, generator=gen(7), config=ALL_M)
    c = augment(x, DEFAULT_STRATEGY, generator=gen(8), config=ALL_M)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("strategy", [None, "", "none"])
def test_empty_strategy_is_identity(strategy):
    x = images(3)
    assert augment(x, strategy, generator=gen()) is x
    p = make_params(strategy, 3, (3, 32, 32), generator=gen())
    assert p.ops == () and torch.equal(apply(x, p), x)


# ----------------------------------------------------------------------------------------------
# Each family


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_preserves_shape(family, shape):
    x = images(5, shape)
    for siamese in (False, True):
        y = augment(x, family, generator=gen(), siamese=siamese)
        assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous() and torch.isfinite(y).all()


def test_crop_translates_with_zero_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = apply(x, one("crop", [[1, -1]]))          # out[i, j] = x[i + 1, j - 1]
    want = torch.zeros(4, 4)
    want[:3, 1:] = x[0, 0, 1:, :3]
    assert torch.equal(out[0, 0], want)
    # shift range: int(28 * 0.125 + 0.5) = 4 pixels, both axes
    p = make_params("crop", 400, (1, 28, 28), generator=gen())
    assert p.ops[0].value.min() == -4 and p.ops[0].value.max() == 4


def test_cutout_zeroes_a_clipped_square():
    x = torch.ones(1, 1, 4, 4)
    out = apply(x, one("cutout", [[-1, 2, 1, 4]]))  # rows [-1, 1), cols [2, 4)
    assert out[0, 0].sum() == 14 and out[0, 0, 0, 2:].sum() == 0
    y = augment(torch.ones(50, 1, 28, 28), "cutout", generator=gen())
    holes = (y == 0).flatten(1).sum(1)
    assert holes.max() == 14 * 14 and holes.min() > 0   # side int(28 * 0.5 + 0.5) = 14, clipped at borders


def test_flip_and_identity_affine():
    x = images(2, (1, 4, 4))
    flip = AugParams(("flip",), (AugOp("flip", torch.tensor([True, False])),), 2, (1, 4, 4), False)
    y = apply(x, flip)
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    torch.testing.assert_close(apply(x[:1], one("scale", eye)), x[:1])   # align_corners=True: exact grid


def test_color_formulas_and_grayscale_saturation():
    x = images(1, (3, 4, 4))
    torch.testing.assert_close(apply(x, one("brightness", [0.25], (3, 4, 4))), x + 0.25)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(apply(x, one("contrast", [1.5], (3, 4, 4))), (x - m) * 1.5 + m)
    assert not torch.allclose(apply(x, one("saturation", [2.0], (3, 4, 4))), x)
    gray = images(3, (1, 28, 28))
    assert torch.equal(apply(gray, one("saturation", [2.0], (1, 28, 28))), gray)
    p = make_params("color", 3, (1, 28, 28), generator=gen(), siamese=True)
    assert [op.name for op in p.ops] == ["brightness", "saturation", "contrast"]   # still drawn: same stream


def test_parameter_ranges():
    n = 500
    scale = make_params("scale", n, (1, 28, 28), generator=gen()).ops[0].value
    assert scale[:, 0, 0].min() >= 1 / 1.2 and scale[:, 1, 1].max() <= 1.2
    assert not torch.equal(scale[:, 0, 0], scale[:, 1, 1])           # sx, sy independent
    rot = make_params("rotate", n, (1, 28, 28), generator=gen()).ops[0].value
    angle = torch.atan2(rot[:, 1, 0], rot[:, 0, 0])
    assert angle.abs().max() <= math.radians(15) + 1e-6 and angle.abs().max() > math.radians(13)
    flips = make_params("flip", n, (1, 28, 28), generator=gen()).ops[0].value.float().mean()
    assert 0.4 < flips < 0.6


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_flow_to_x(family):
    x = images(4, (3, 8, 8), dtype=torch.float64).requires_grad_(True)
    p = make_params(family, 4, (3, 8, 8), generator=gen(3), config=ALL_M)
    weights = torch.rand(4, 3, 8, 8, generator=gen(4), dtype=torch.float64)
    (apply(x, p) * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    small = images(2, (2, 5, 5), dtype=torch.float64).requires_grad_(True)
    sp = make_params(family, 2, (2, 5, 5), generator=gen(3), siamese=True)
    assert torch.autograd.gradcheck(lambda t: apply(t, sp), (small,), fast_mode=True)


def test_values_follow_the_requested_device():
    p = make_params(DEFAULT_STRATEGY, 2, (1, 28, 28), generator=gen(), device="cpu", config=ALL_M)
    assert all(op.value.device.type == "cpu" for op in p.to("cpu").ops)
    assert dsa.apply(images(2, (1, 28, 28)), p).shape == (2, 1, 28, 28)
