"""DD-Ranking scores (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation",
arXiv 2505.13300; NUS-HPC-AI-Lab/DD-Ranking): pure arithmetic on test accuracies, no torch.

Every accuracy here is a **fraction** in [0, 1]. With fractions the weighted sums α and β lie in
[-1, 1] and the normalised scores in [0, 1], which is what the exponential normalisation is
built for; feeding percentages (as 56.5 rather than 0.565) would give e^56 and is refused.

    HLR = Acc(full data, hard) - Acc(set, hard)                  hard-label recovery (lower is better)
    IOR = Acc(set, its labels) - Acc(random, the same labels)    improvement over random
    α   = w·IOR - (1 - w)·HLR,  w = 0.5                          (DD-Ranking's `lrs_lambda`)
    LRS = (e^α - e^-1) / (e - e^-1)                              label-robust score
    β   = γ·(Acc(set, aug) - Acc(random, aug))
          + (1 - γ)·(Acc(set, no aug) - Acc(random, no aug)),  γ = 0.5
    ARS = (e^β - e^-1) / (e - e^-1)                              augmentation-robust score

Sources: HLR/IOR/α/LRS from the repository's README "Benchmark" section and
`ddranking/metrics/soft_label.py::compute_metrics` (per evaluation run, then mean and population
std over runs); β/ARS from `doc/introduction.md` "Augmentation-Robust Score (ARS)" ("normalized
similarly"), with the with/without-augmentation gaps computed per run as in
`ddranking/metrics/aug_robust.py::compute_metrics`. docs/evaluation.md has the derivation.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

_LOW, _HIGH = math.exp(-1.0), math.e


def _check(name: str, acc: float) -> float:
    acc = float(acc)
    if not (0.0 <= acc <= 1.0) or math.isnan(acc):
        raise ValueError(f"{name} must be an accuracy fraction in [0, 1], got {acc!r} (a percentage?)")
    return acc


def normalise(x: float) -> float:
    """(e^x - e^-1) / (e - e^-1): maps [-1, 1] onto [0, 1] (0 -> 0.2689)."""
    return (math.exp(x) - _LOW) / (_HIGH - _LOW)


def hlr(full_acc: float, set_hard_acc: float) -> float:
    """Hard-label recovery: how far the set (hard labels) stays below the full data."""
    return _check("full-data accuracy", full_acc) - _check("set accuracy (hard labels)", set_hard_acc)


def ior(set_acc: float, random_acc: float) -> float:
    """Improvement over random: set minus a same-size random subset, same recipe and labels."""
    return _check("set accuracy", set_acc) - _check("random-subset accuracy", random_acc)


def lrs(hlr_value: float, ior_value: float, weight: float = 0.5) -> tuple[float, float]:
    """(α, LRS) with α = weight·IOR - (1 - weight)·HLR."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"LRS weight must be in [0, 1], got {weight}")
    alpha = weight * ior_value - (1.0 - weight) * hlr_value
    return alpha, normalise(alpha)


def ars(set_aug: float, random_aug: float, set_no_aug: float, random_no_aug: float,
        weight: float = 0.5) -> tuple[float, float]:
    """(β, ARS) with β = weight·(set - random | with aug) + (1 - weight)·(set - random | without)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"ARS weight must be in [0, 1], got {weight}")
    beta = weight * ior(set_aug, random_aug) + (1.0 - weight) * ior(set_no_aug, random_no_aug)
    return beta, normalise(beta)


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 4) -> dict:
    """{"mean", "std" (population, as numpy's default and DD-Ranking), "runs"}, each × scale."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values to summarise")
    return {"mean": round(scale * statistics.fmean(vals), digits),
            "std": round(scale * statistics.pstdev(vals), digits) if len(vals) > 1 else 0.0,
            "runs": [round(scale * v, digits) for v in vals]}


def scores(full: float, set_hard: Sequence[float], set_own: Sequence[float], random_own: Sequence[float], *,
           set_aug: Sequence[float] | None = None, random_aug: Sequence[float] | None = None,
           set_no_aug: Sequence[float] | None = None, random_no_aug: Sequence[float] | None = None,
           lrs_weight: float = 0.5, ars_weight: float = 0.5) -> dict:
    """Per-run HLR, IOR, α, LRS (and β, ARS when the four augmentation lists are given), then
    mean ± std over runs. Run r pairs the r-th entry of every list (same seed, same random
    subset). HLR/IOR are reported in percentage points, LRS/ARS in percent (100 × score, as
    DD-Ranking's leaderboard), α/β as fractions.
    """
    n = len(set_hard)
    lists = {"set_own": set_own, "random_own": random_own}
    aug = (set_aug, random_aug, set_no_aug, random_no_aug)
    if any(a is not None for a in aug):
        if any(a is None for a in aug):
            raise ValueError("ARS needs all four of set_aug, random_aug, set_no_aug, random_no_aug")
        lists.update(zip(("set_aug", "random_aug", "set_no_aug", "random_no_aug"), aug))
    for name, vals in lists.items():
        if len(vals) != n:
            raise ValueError(f"{name} has {len(vals)} runs, set_hard has {n}")
    h = [hlr(full, a) for a in set_hard]
    i = [ior(a, b) for a, b in zip(set_own, random_own)]
    al, ls = zip(*(lrs(hv, iv, lrs_weight) for hv, iv in zip(h, i)))
    out = {"hlr": summary(h, 100, 2), "ior": summary(i, 100, 2), "alpha": summary(al),
           "lrs": summary(ls, 100, 2), "weights": {"lrs": lrs_weight, "ars": ars_weight}}
    if "set_aug" in lists:
        be, ar = zip(*(ars(sa, ra, sn, rn, ars_weight) for sa, ra, sn, rn in zip(*aug)))
        out["beta"] = summary(be)
        out["ars"] = summary(ar, 100, 2)
    return out
