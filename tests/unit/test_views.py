"""Views (augment/views.py) and their stored form (io/viewlabels.py): drawn from a seed alone,
within the image, rendered the same whichever samples are asked for, packed and unpacked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcompress.augment.views import VIEW, ViewConfig, base_views, draw, render
from dcompress.errors import UsageError
from dcompress.io import viewlabels
from dcompress.seeds import derive
from dcompress.train.relabel import SetViews, sample_keys


def keys_of(n_per_class: int, classes: int = 3) -> list[tuple[int, int]]:
    return sample_keys(torch.arange(classes).repeat_interleave(n_per_class))


def test_draw_depends_on_seed_and_epoch_only():
    cfg, keys = ViewConfig(), keys_of(4)
    a = draw(cfg, derive(0, "views", 3), keys, (28, 28))
    assert a.tobytes() == draw(cfg, derive(0, "views", 3), keys, (28, 28)).tobytes()
    assert a.tobytes() != draw(cfg, derive(0, "views", 4), keys, (28, 28)).tobytes()
    top, left, h, w = a["box"].T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    assert ((h * w) >= 0.5 * 28 * 28 * 0.9).all()                     # min_scale 0.5 (rounding aside)
    assert {(int(c), int(s)) for c, s in zip(a["pclass"], a["pslot"])} <= set(keys)
    y0, x0, mh, mw = a["mbox"].T
    assert (y0 + mh <= 28).all() and (x0 + mw <= 28).all()


def test_no_cutmix_and_no_flip_when_switched_off():
    a = draw(ViewConfig(cutmix=0, flip=False), derive(1, "views", 0), keys_of(3), (16, 16))
    assert (a["pclass"] == -1).all() and (a["flip"] == 0).all()


def test_full_box_without_flip_is_the_image():
    x = torch.randn(2, 1, 8, 8)
    rec = np.zeros(2, dtype=VIEW)
    rec["box"] = (0, 0, 8, 8)
    torch.testing.assert_close(base_views(x, rec), x)
    rec["flip"] = 1
    torch.testing.assert_close(base_views(x, rec), x.flip(-1))


def test_render_pastes_the_partner_view_and_does_not_depend_on_the_batch():
    x = torch.randn(6, 1, 12, 12)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    sv = SetViews(x, labels, ViewConfig(), seed=5)
    whole = sv.images_of(2)
    for i in range(6):
        torch.testing.assert_close(sv.images_of(2, [i])[0], whole[i], rtol=0, atol=0)
    rec = sv.epoch(2)
    i = int(np.flatnonzero(rec["pclass"] >= 0)[0])
    j = sv.index_of[(int(rec["pclass"][i]), int(rec["pslot"][i]))]
    y0, x0, h, w = (int(v) for v in rec["mbox"][i])
    partner = base_views(x[[j]], rec[[j]])[0]
    torch.testing.assert_close(whole[i, :, y0:y0 + h, x0:x0 + w], partner[:, y0:y0 + h, x0:x0 + w])


@pytest.mark.parametrize("k", [None, 2])
def test_pack_unpack_round_trip(k):
    views = draw(ViewConfig(), derive(0, "views", 0), keys_of(2), (10, 10))[:5]
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    rec = viewlabels.pack(views, logits, k)
    back_views, back = viewlabels.unpack(rec, 4, k, 5)
    assert back_views.tobytes() == views.tobytes()
    if k is None:
        np.testing.assert_array_equal(back, logits.astype(np.float16).astype(np.float32))
    else:
        kept = np.isfinite(back)
        assert (kept.sum(1) == k).all()
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        assert all(set(np.flatnonzero(kept[e])) == set(top[e]) for e in range(5))


def test_unpack_refuses_another_view_count_or_layout():
    views = draw(ViewConfig(), derive(0, "views", 0), keys_of(2), (10, 10))
    rec = viewlabels.pack(views, np.zeros((len(views), 3), np.float32))
    with pytest.raises(ValueError, match="manifest says 7"):
        viewlabels.unpack(rec, 3, None, 7)
    with pytest.raises(ValueError, match="view records"):
        viewlabels.unpack(rec, 4, None, len(views))


@pytest.mark.parametrize("bad", [{"epochs": 10_001}, {"min_scale": 0.9, "max_scale": 0.5}, {"min_scale": 0.0},
                                 {"temperature": 0}])
def test_view_config_ranges(bad):
    with pytest.raises(UsageError):
        ViewConfig(**bad)
