"""`frontier` over torchrun ranks: which rank runs which points, and how rank 0 learns of them
(docs/frontier.md, "torchrun").

Groups: the points of one (labels, budget), methods in the order of `--methods`. They are the
points that share a random side, so one rank runs a whole group, in the order one process runs
it, and trains the side for the group's first point. The ranks take groups from one queue as
they get free (`dist.ticket`, a job-wide counter in torchrun's key-value store), the largest
budget first (its networks train on the most images); one process runs the groups in the
grid's order. Each point is distilled and evaluated inside `dist.alone()`: by this rank alone,
with no collective, exactly as one process does it.

Results: rank r > 0 rewrites `REPORT/ranks/<r>.json` (its points and counters; atomic) after
each point, and once more, marked done, when the queue is empty. Rank 0 merges the rank files
into frontier.json after each of its own points, then polls them until every rank is done and
writes the report. No rank waits in a collective while another works: a point can take hours,
a collective times out (DCOMPRESS_DIST_TIMEOUT). A rank that fails stops the job through
torchrun (its agent stops the other ranks, the first failure's exit code is the job's); the
rank files keep the points that finished, and a rerun with any number of processes folds them
into frontier.json (`fold`) before it starts.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from .. import dist
from ..errors import UsageError

RANKS = "ranks"          # REPORT/ranks/<r>.json, while a frontier of several ranks runs
POLL_S = 0.5
COUNTERS = ("points_run", "points_failed", "random_sides_trained", "random_sides_reused")


def grid_of(settings: dict) -> list[tuple[str, str, str]]:
    """Every point (method, budget, labels): labels-major, then budget, then method."""
    return [(m, b, lab) for lab in settings["labels"] for b in settings["budgets"] for m in settings["methods"]]


def groups(grid: list[tuple[str, str, str]]) -> list[list[int]]:
    """The grid's indices by (labels, budget), in grid order: the points that share a random side."""
    by: dict[tuple[str, str], list[int]] = {}
    for i, (_, b, lab) in enumerate(grid):
        by.setdefault((lab, b), []).append(i)
    return list(by.values())


def my_points(grid: list[tuple[str, str, str]], pending: set[int], real, run: str) -> Iterator[int]:
    """The grid indices this rank runs (or finds kept), group by group. One process: every
    point in grid order. Under torchrun: the groups this rank takes from the job's queue, a
    group when the previous one is done."""
    gs = groups(grid)
    if dist.world() == 1:
        for g in gs:
            yield from g
        return
    queue = largest_first(gs, grid, pending, real)
    while (k := dist.ticket(f"frontier/{run}")) < len(queue):
        yield from queue[k]


def largest_first(gs: list[list[int]], grid, pending: set[int], real) -> list[list[int]]:
    """Groups by pending points x budget in bytes, largest first (ties and unresolvable budgets
    keep grid order): the longest work starts first, the short groups fill the gaps."""
    from .budget import input_bytes, parse_budget

    def size(budget: str) -> float:
        kind, value = parse_budget(budget)
        return value * input_bytes(real) if kind == "share" else value

    try:
        cost = [sum(i in pending for i in g) * size(grid[g[0]][1]) for g in gs]
    except UsageError:                 # a share of remote shards: that point fails on its own
        return gs
    return [g for _, g in sorted(zip(cost, gs), key=lambda cg: -cg[0])]


def ident_digest(ident: dict) -> str:
    """The digest rank files carry: of the report's identity without the grid's axes and the
    methods' own `--set`s (frontier._without_grid), the rule frontier.json keeps points by, so
    a rerun with a grown grid folds them too."""
    from .frontier import _without_grid

    return hashlib.sha256(json.dumps(_without_grid(ident), sort_keys=True, default=str).encode()).hexdigest()[:16]


def fold(out: Path, ident: dict, points: list[dict]) -> list[dict]:
    """`points` (frontier.json's) with the finished points of the rank files a killed run of the
    same frontier left, in grid order; the caller writes frontier.json, then `clear`s."""
    done = {p["name"]: p for p in points}
    for part in _rank_files(out):
        if part.get("ident") == ident_digest(ident):
            for p in part.get("points") or []:
                if p.get("status") == "ok" and done.get(p.get("name"), {}).get("status") != "ok":
                    done[p["name"]] = p
    from .frontier import point_name

    order = [point_name(*g) for g in grid_of(ident["settings"])]
    return [done[n] for n in order if n in done]


def clear(out: Path) -> None:
    shutil.rmtree(out / RANKS, ignore_errors=True)


def _rank_files(out: Path) -> list[dict]:
    parts = []
    for f in sorted((out / RANKS).glob("*.json")):
        try:
            part = json.loads(f.read_text())
        except (OSError, ValueError):
            continue                    # being replaced (atomic rename) or truncated: read next time
        if isinstance(part, dict):
            parts.append(part)
    return parts


class Ledger:
    """The points finished in this run and the work counted: this rank's, and on rank 0 every
    rank's. `record` after each point; `finish` when this rank's queue is empty."""

    def __init__(self, out: Path, ident: dict, state: dict, *, names: list[str], kept: dict[str, dict], run: str,
                 store, write: Callable[[dict], None], note: Callable[[str], None]):
        self.out, self.ident, self.state, self.names, self.kept, self.run = out, ident, state, names, kept, run
        self.store, self.write, self.note = store, write, note
        self.rank, self.world = dist.rank(), dist.world()
        self.points: dict[str, dict] = {}          # this run's: this rank's (rank 0: and the others')
        self.mine: list[str] = []
        self.counts = {"points_run": 0, "points_failed": 0}
        self.others: dict[int, dict] = {}          # rank 0: each rank's latest file of this run

    def record(self, p: dict) -> None:
        """Keeps a finished (or failed) point and makes it durable: rank 0 in frontier.json,
        the other ranks in their rank file."""
        self.points[p["name"]] = p
        self.mine.append(p["name"])
        self.counts["points_run" if p["status"] == "ok" else "points_failed"] += 1
        if self.rank == 0:
            self._merge()
            self._write_running()
        else:
            self._write_rank(done=False)

    def finish(self) -> tuple[list[dict], dict]:
        """(every point in grid order, the job's counters) on rank 0, once every rank is done;
        (this rank's points, its counters) on the others."""
        if self.rank != 0:
            self._write_rank(done=True)
            return [self.points[n] for n in self.mine], self._own()
        while not self._merge():
            time.sleep(POLL_S)
        points = [self.points.get(n) or self.kept[n] for n in self.names]
        counters = {k: sum(c[k] for c in [self._own()] + [o["counters"] for o in self.others.values()])
                    for k in COUNTERS}
        kept = len(self.names) - counters["points_run"] - counters["points_failed"]
        return points, {"points_run": counters["points_run"], "points_kept": kept, **{
            k: counters[k] for k in COUNTERS if k != "points_run"}}

    def _own(self) -> dict:
        return {**self.counts, "random_sides_trained": len(self.store.trained),
                "random_sides_reused": len(self.store.reused)}

    def _merge(self) -> bool:
        """Rank 0: the other ranks' new points (noted, and frontier.json rewritten when there
        are any); True when every rank is done."""
        from .frontier import line

        new = []
        for part in _rank_files(self.out):
            if part.get("run") != self.run or not isinstance(part.get("rank"), int):
                continue
            self.others[part["rank"]] = part
            for p in part.get("points") or []:
                if p["name"] not in self.points:
                    self.points[p["name"]] = p
                    new.append((part["rank"], p))
        for r, p in sorted(new, key=lambda rp: self.names.index(rp[1]["name"])):
            i = self.names.index(p["name"])
            self.note(f"point {i + 1}/{len(self.names)}: {p['method']} @ {p['budget']} ({p['labels']}), "
                      f"rank {r}: {line(p)}")
        if new:
            self._write_running()
        return all(self.others.get(r, {}).get("done") for r in range(1, self.world))

    def _write_running(self) -> None:
        done = [self.points.get(n) or self.kept.get(n) for n in self.names]
        self.write({**self.state, "status": "running", "points": [p for p in done if p is not None]})

    def _write_rank(self, *, done: bool) -> None:
        from ..errors import os_error
        from ..io.safe_write import ensure_dir, write_json

        path = self.out / RANKS / f"{self.rank}.json"
        try:
            write_json(ensure_dir(path.parent) / path.name,
                       {"ident": ident_digest(self.ident), "run": self.run, "rank": self.rank, "done": done,
                        "points": [self.points[n] for n in self.mine], "counters": self._own()})
        except OSError as e:
            raise os_error(e, path, "write the frontier report") from None
