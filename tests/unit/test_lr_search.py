"""The fair protocol's lr search (train/lr_search.py): the halving rungs and their cost, the cut
(ties to the earlier lr), the winner's network equal to the grid's, the config and cache key."""
from __future__ import annotations

import pytest
import torch

from dcompress.config import resolve_config
from dcompress.errors import UsageError
from dcompress.io.schema import EvalProtocol
from dcompress.train.fair import FairConfig
from dcompress.train.loop import SetTrainer, accuracy, train_on_set
from dcompress.train.lr_search import planned_passes, rungs, search


def test_rungs_cut_to_a_third_until_one_remains_and_end_at_the_whole_schedule():
    assert rungs(5, 301, "halving") == [(34, 5), (101, 2), (301, 1)]
    assert planned_passes(5, 301, "halving") == 5 * 34 + 2 * 67 + 200 and planned_passes(5, 301) == 5 * 301
    assert rungs(10, 301, "halving") == [(12, 10), (34, 4), (101, 2), (301, 1)]
    assert rungs(9, 12, "halving", eta=2) == [(1, 9), (2, 5), (3, 3), (6, 2), (12, 1)]
    assert rungs(3, 11, "halving") == [(4, 3), (11, 1)] and rungs(2, 11, "halving") == [(4, 2), (11, 1)]
    assert rungs(1, 11, "halving") == rungs(1, 11) == [(11, 1)]     # one lr: nothing to cut, the grid
    assert rungs(5, 1, "halving") == [(1, 5), (1, 2), (1, 1)]      # one pass: the cuts cost nothing


class _Stub:
    """A SetTrainer stand-in whose network is its (lr, passes): scores are looked up."""

    def __init__(self, lr: float, total: int = 6):
        self.lr, self.passes, self.total = lr, 0, total
        self.net = self

    def run_to(self, p: int):
        self.passes = p
        return self


def test_the_cut_keeps_the_best_third_and_the_earlier_lr_on_a_tie():
    # rungs at 1, 2 and 6 passes. At 1, 0.3 and 0.1 tie behind 0.2: 0.2 and the earlier 0.1 go
    # on; at 2 they tie: the earlier 0.1 trains to the end and is the pick
    val = {1: {0.1: 0.5, 0.2: 0.9, 0.3: 0.5, 0.4: 0.1, 0.5: 0.2}, 2: {0.1: 0.85, 0.2: 0.85}, 6: {0.1: 0.8}}
    ticks = []
    lr, net, rows = search((0.1, 0.2, 0.3, 0.4, 0.5), _Stub, lambda n: val[n.passes][n.lr],
                           passes=6, how="halving", tick=ticks.append)
    assert lr == 0.1 and net.lr == 0.1
    assert [(r["lr"], r["val"], r["passes"]) for r in rows] == [
        (0.1, 80.0, 6), (0.2, 85.0, 2), (0.3, 50.0, 1), (0.4, 10.0, 1), (0.5, 20.0, 1)]
    assert ticks == [1] * 5 + [1] * 2 + [4] and sum(ticks) == planned_passes(5, 6, "halving")
    with pytest.raises(ValueError, match="lr search"):
        search((0.1,), _Stub, lambda n: 0.0, passes=6, how="bogus")


def test_the_halving_winner_is_the_network_the_grid_trains_at_its_lr():
    from tests.conftest import tiny_real

    real = tiny_real()
    x, y = real.get(torch.arange(len(real))), real.labels
    proto = EvalProtocol(model="convnet_w8", epochs=5, batch_size=8, aug="flip_crop")
    cpu = torch.device("cpu")

    def make(lr: float) -> SetTrainer:
        return SetTrainer(x, y, num_classes=3, protocol=proto, generator=torch.Generator().manual_seed(0),
                          device=cpu, lr=lr)

    def score(net) -> float:
        return accuracy(net, x, y, device=cpu)

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        return all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))

    grid = (0.01, 0.05, 0.1, 0.0005, 0.001)
    g_lr, g_net, g_rows = search(grid, make, score, passes=6, how="grid")
    h_lr, h_net, h_rows = search(grid, make, score, passes=6, how="halving")
    assert [r["passes"] for r in g_rows] == [6] * 5 and sorted(r["passes"] for r in h_rows) == [1, 1, 1, 2, 6]
    assert h_lr == g_lr == 0.01 and same(g_net, h_net)    # the same pick: the same network, bit for bit
    assert next(r["val"] for r in h_rows if r["lr"] == h_lr) == next(r["val"] for r in g_rows if r["lr"] == g_lr)
    # whatever it picks, halving's network is the one uninterrupted training at its lr gives
    other = (0.0005, 0.001, 0.01, 0.05, 0.1)
    lr, net, _ = search(other, make, score, passes=6, how="halving")
    assert lr != search(other, make, score, passes=6, how="grid")[0]   # a tie at 100 %: the cut dropped 0.001
    assert same(net, train_on_set(x, y, num_classes=3, protocol=proto, generator=torch.Generator().manual_seed(0),
                                  device=cpu, lr=lr))


def test_config_refuses_an_unknown_search_and_a_factor_below_two():
    assert FairConfig().lr_search == "grid" and FairConfig().halving_eta == 3
    assert resolve_config(FairConfig, flags={"lr_search": "halving"}).lr_search == "halving"
    with pytest.raises(UsageError, match="--lr-search must be one of grid, halving"):
        resolve_config(FairConfig, flags={"lr_search": "bisect"})
    with pytest.raises(UsageError, match="halving_eta"):
        FairConfig(halving_eta=1)


def test_the_random_side_key_tells_halving_from_grid():
    from types import SimpleNamespace

    from dcompress.train.random_sides import digest, side_key

    from dcompress.io.imageformat import ImageFormat

    ds = SimpleNamespace(views=None, mean=(0.2,), std=(0.3,), label_topk=None, image_format=ImageFormat.parse("png"))
    common = dict(ds=ds, train=SimpleNamespace(source={"fingerprint": "f"}), test_key={"samples": 3},
                  counts=[1, 1], recipe=EvalProtocol(), grid=(0.01, 0.1), runs=2, seed=0, label="hard", aug=None,
                  val_per_class=2, teacher_info=None, device="cpu")
    grid, halving = side_key(**common, lr_search="grid"), side_key(**common, lr_search="halving")
    assert digest(grid) != digest(halving) and halving["lr_search"] == "halving" and halving["halving_eta"] == 3
    assert digest(side_key(**common, lr_search="halving", eta=2)) != digest(halving)
    assert side_key(**common) == grid and "lr_search" not in grid   # the sides stored before keep their keys
