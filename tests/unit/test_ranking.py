"""DD-Ranking score formulas (train/ranking.py) against values worked out by hand.

Constants used below: e = 2.7182818, e^-1 = 0.3678794, e - e^-1 = 2.3504024.
"""
from __future__ import annotations

import pytest

from dcompress.train import ranking


def test_normalisation_maps_minus_one_zero_one():
    assert ranking.normalise(-1.0) == pytest.approx(0.0, abs=1e-12)
    assert ranking.normalise(1.0) == pytest.approx(1.0)
    # α = 0: (1 - e^-1) / (e - e^-1) = 1 / (e + 1)
    assert ranking.normalise(0.0) == pytest.approx(0.2689414, abs=1e-7)


def test_lrs_by_hand():
    # full 80 %, set 60 % (hard) -> HLR 0.20; set 70 %, random 55 % (same labels) -> IOR 0.15
    h = ranking.hlr(0.80, 0.60)
    i = ranking.ior(0.70, 0.55)
    assert h == pytest.approx(0.20) and i == pytest.approx(0.15)
    alpha, lrs = ranking.lrs(h, i)
    assert alpha == pytest.approx(-0.025)                    # 0.5 * 0.15 - 0.5 * 0.20
    # (e^-0.025 - e^-1) / (e - e^-1) = (0.9753099 - 0.3678794) / 2.3504024
    assert lrs == pytest.approx(0.2584368, abs=1e-6)


def test_lrs_weight_moves_between_ior_and_hlr():
    assert ranking.lrs(0.2, 0.1, weight=1.0)[0] == pytest.approx(0.1)     # IOR only
    assert ranking.lrs(0.2, 0.1, weight=0.0)[0] == pytest.approx(-0.2)    # -HLR only
    with pytest.raises(ValueError):
        ranking.lrs(0.2, 0.1, weight=1.5)


def test_ars_by_hand():
    # with aug: 75 vs 70 (+0.05); without: 65 vs 66 (-0.01) -> β = 0.5·0.05 + 0.5·(-0.01) = 0.02
    beta, ars = ranking.ars(0.75, 0.70, 0.65, 0.66)
    assert beta == pytest.approx(0.02)
    # (e^0.02 - e^-1) / (e - e^-1) = (1.0202013 - 0.3678794) / 2.3504024
    assert ars == pytest.approx(0.2775363, abs=1e-6)
    assert ranking.ars(0.75, 0.70, 0.65, 0.66, weight=1.0)[0] == pytest.approx(0.05)


def test_percentages_are_refused():
    with pytest.raises(ValueError, match="fraction"):
        ranking.hlr(93.5, 70.2)
    with pytest.raises(ValueError, match="fraction"):
        ranking.ior(0.7, 55.0)
    with pytest.raises(ValueError):
        ranking.ior(float("nan"), 0.5)


def test_scores_are_per_run_then_averaged():
    # run 0: HLR 0.1, IOR 0.3 -> α 0.1; run 1: HLR 0.5, IOR -0.1 -> α -0.3
    s = ranking.scores(0.9, set_hard=[0.8, 0.4], set_own=[0.8, 0.4], random_own=[0.5, 0.5])
    assert s["hlr"] == {"mean": 30.0, "std": 20.0, "runs": [10.0, 50.0]}      # points
    assert s["ior"] == {"mean": 10.0, "std": 20.0, "runs": [30.0, -10.0]}
    assert s["alpha"]["runs"] == [0.1, -0.3]
    # LRS per run: (e^0.1 - e^-1)/(e - e^-1) = 0.3136873, (e^-0.3 - e^-1)/(e - e^-1) = 0.1586702;
    # mean 0.2361788 (the LRS of the mean α, 0.2284536, would be wrong)
    assert s["lrs"]["runs"] == [31.37, 15.87] and s["lrs"]["mean"] == pytest.approx(23.62, abs=0.01)
    assert "ars" not in s


def test_scores_with_augmentation_lists():
    s = ranking.scores(0.9, [0.6], [0.7], [0.6], set_aug=[0.75], random_aug=[0.70], set_no_aug=[0.65],
                       random_no_aug=[0.66])
    assert s["beta"]["runs"] == [0.02] and s["ars"]["runs"] == [27.75]
    with pytest.raises(ValueError, match="all four"):
        ranking.scores(0.9, [0.6], [0.7], [0.6], set_aug=[0.75])
    with pytest.raises(ValueError, match="runs"):
        ranking.scores(0.9, [0.6, 0.5], [0.7], [0.6])
