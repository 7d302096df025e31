"""The pieces of a frontier over torchrun ranks that need no process group: the (labels, budget)
groups and their queue order, `dist.alone`, `dist.ticket`, and the waiting lock that makes a
shared cache entry once (torchrun jobs: tests/integration/test_distributed.py)."""
from __future__ import annotations

import threading
import time

import pytest

from dcompress import dist
from dcompress.api import frontier_ranks as ranks
from dcompress.errors import UsageError
from dcompress.io.atomic import one_at_a_time

SETTINGS = {"methods": ["random", "herding", "dm"], "budgets": ["40KB", "1MB", "200KB"], "labels": ["hard", "teacher"]}


def test_groups_are_the_points_of_one_labels_and_budget_in_grid_order():
    grid = ranks.grid_of(SETTINGS)
    gs = ranks.groups(grid)
    assert len(gs) == 6 and [i for g in gs for i in g] == list(range(18))
    assert [{(grid[i][1], grid[i][2]) for i in g} for g in gs][:2] == [{("40KB", "hard")}, {("1MB", "hard")}]
    assert [grid[i][0] for i in gs[0]] == SETTINGS["methods"]          # methods in --methods order


def test_the_queue_puts_the_most_pending_bytes_first():
    grid = ranks.grid_of(SETTINGS)
    gs = ranks.groups(grid)
    everything = set(range(len(grid)))
    order = ranks.largest_first(gs, grid, everything, real=None)
    assert [grid[g[0]][1:] for g in order] == [("1MB", "hard"), ("1MB", "teacher"), ("200KB", "hard"),
                                               ("200KB", "teacher"), ("40KB", "hard"), ("40KB", "teacher")]
    # the 1MB hard group finished before (kept): nothing left to run there, it goes last
    rest = everything - set(gs[1])
    assert ranks.largest_first(gs, grid, rest, real=None)[-1] == gs[1]


def test_alone_makes_a_rank_one_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "_grouped", lambda: True)
    assert dist.active()
    with pytest.raises(UsageError, match="does not support torchrun"):
        dist.require_single("x")
    with dist.alone():
        assert not dist.active() and dist.rank() == 0 and dist.world() == 1
        assert dist.broadcast_object("mine") == "mine" and dist.all_gather_object(3) == [3]
        dist.require_single("x")
        with dist.alone():
            pass
        assert not dist.active()
    assert dist.active()


def test_ticket_counts_each_counter_from_zero():
    assert [dist.ticket("t-a"), dist.ticket("t-a"), dist.ticket("t-b"), dist.ticket("t-a")] == [0, 1, 0, 2]


def test_one_at_a_time_runs_the_block_in_turn_and_removes_the_lock(tmp_path):
    lock, events, notes = tmp_path / ".x.lock", [], []

    def holder():
        with one_at_a_time(lock):
            events.append("a in")
            time.sleep(0.3)
            events.append("a out")

    t = threading.Thread(target=holder)
    t.start()
    while not events:
        time.sleep(0.01)
    with one_at_a_time(lock, notes.append, "making x"):
        events.append("b in")
    t.join()
    assert events == ["a in", "a out", "b in"]
    assert len(notes) == 1 and "waiting for another dcompress process making x" in notes[0]
    assert not lock.exists()
