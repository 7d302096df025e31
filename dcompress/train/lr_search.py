"""Picking run 0's learning rate on the validation split (the fair protocol, train/fair.py).

`grid`: every lr of the grid trains the whole schedule (P = epochs + 1 passes); the best
validation accuracy picks the lr, the earliest on a tie (DD-Ranking's search, on a validation
split).

`halving`: successive halving (Jamieson & Talwalkar 2016; the inner loop of Hyperband, Li et
al. 2018). With G lrs and a factor eta, the lrs are cut to ceil(n / eta) at each rung until one
remains; K cuts. Rung k (k = 0 .. K) is at ceil(P / eta^(K - k)) passes, the last one at P: every
lr trains to rung 0, the best ceil(n / eta) by validation accuracy (the earlier lr on a tie)
train on to the next rung, and so on; the one left trains to P and is the pick. With the
defaults (G = 5, eta = 3): 5 lrs to ceil(P / 9), 2 to ceil(P / 3), 1 to P: about 5 P / 9 +
2 (P / 3 - P / 9) + (P - P / 3) = 5 P / 3 network-passes instead of 5 P; a grid of 3: 3 lrs to
ceil(P / 3), 1 to P, 5 P / 3 instead of 3 P.

Training goes on where a rung stopped (`SetTrainer.run_to`), so the picked lr's network is
bit for bit the one the grid trains at that lr. docs/evaluation.md, "--lr-search halving".
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .loop import SetTrainer

LR_SEARCHES = ("grid", "halving")


def rungs(n: int, passes: int, search: str = "grid", eta: int = 3) -> list[tuple[int, int]]:
    """[(pass count, lrs trained to it), ...] for `n` lrs and a `passes`-pass schedule: one
    rung (passes, n) for the grid; the halving rungs (last: the whole schedule) otherwise."""
    if search == "grid" or n <= 1:
        return [(passes, n)]
    counts = [n]
    while counts[-1] > 1:
        counts.append(math.ceil(counts[-1] / eta))
    cuts = len(counts) - 1
    return [(math.ceil(passes / eta ** (cuts - k)), m) for k, m in enumerate(counts)]


def planned_passes(n: int, passes: int, search: str = "grid", eta: int = 3) -> int:
    """Network-passes the search trains (fewer when a network diverges and stops early)."""
    total, before = 0, 0
    for at, m in rungs(n, passes, search, eta):
        total, before = total + m * (at - before), at
    return total


def search(grid: tuple[float, ...], make: Callable[[float], SetTrainer], score: Callable[[torch.nn.Module], float],
           *, passes: int, how: str = "grid", eta: int = 3, tick: Callable[[int], None] = lambda n: None
           ) -> tuple[float, torch.nn.Module, list[dict]]:
    """(picked lr, its network after the whole schedule, rows) for the lrs of `grid`.

    `make(lr)` builds the lr's SetTrainer of `passes` passes (run 0's init and data), `score(net)`
    is the validation accuracy (fraction); `tick(k)` after each network's stretch of k planned
    passes. Rows in grid order: {"lr", "val" (% at the last pass count it reached), "passes"}.
    At most the survivors of a rung are held in memory, and of the last rung only the best.
    """
    if how not in LR_SEARCHES:
        raise ValueError(f"lr search {how!r} is not one of {', '.join(LR_SEARCHES)}")
    plan = rungs(len(grid), passes, how, eta)
    trainers: dict[int, SetTrainer] = {}
    vals: dict[int, float] = {}
    reached: dict[int, int] = {}
    live, before, best = list(range(len(grid))), 0, None
    for k, (at, _) in enumerate(plan):
        last = k == len(plan) - 1
        for i in live:
            t = trainers.pop(i, None) or make(grid[i])
            vals[i], reached[i] = score(t.run_to(at)), t.passes
            tick(at - before)
            if not last:
                trainers[i] = t
            elif best is None or vals[i] > best[0]:          # the earliest lr on a tie
                best = (vals[i], i, t.net)
        if not last:                                         # the best ceil(n / eta), the earlier on a tie
            live = sorted(sorted(live, key=lambda i: (-vals[i], i))[:plan[k + 1][1]])
            trainers = {i: trainers[i] for i in live}
        before = at
    rows = [{"lr": lr, "val": round(100 * vals[i], 2), "passes": reached[i]} for i, lr in enumerate(grid)]
    return grid[best[1]], best[2], rows
