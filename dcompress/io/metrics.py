"""`metrics.jsonl`: the loss curve of a run, one JSON object per line.

Methods report progress through their `log(event)` callback (`{"event": "iteration",
"iteration": 12, "loss": 0.31}`; MTT/DD say `it`, teacher/expert training `epoch`).
`MetricsLog` is such a callback: it keeps the events that carry a loss, normalised to

    {"event": "iteration", "iteration": 12, "loss": 0.31, "lr": 0.01, "seconds": 4.2}

(`lr` only when the event has one; `expert` kept for expert training), forwards every event
to an optional downstream `log`, and appends each row to a file in the run's work folder so
that a killed run keeps its curve. On resume the rows past the checkpoint the method resumed
from are dropped: the first `iteration` row of the new process (iteration N + 1) cuts the old
rows after the last one with iteration <= N; `seconds` continue from the kept rows.
A resumed method emits `{"event": "resumed", "iteration": N}` (DC/DM) or just starts at N + 1
(MTT/DD); both work.

The file is written into the output folder with the shards; `seconds` differ run to run, so
`metrics.jsonl` (unlike the shards, `_info.json` and `README.md`) is not byte-reproducible.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

from ..errors import os_error
from .safe_write import write_bytes

METRICS = "metrics.jsonl"
ITERATION_KEYS = ("iteration", "it", "epoch")


def normalise(event: dict) -> dict | None:
    """One metrics row from a method's log event, or None for events without a loss.

    Non-finite losses become null (strict JSON). `resumed` events are kept (no loss) as the
    curve's resume marker.
    """
    kind = str(event.get("event", "log"))
    if "loss" not in event and kind != "resumed":
        return None
    row: dict = {"event": kind}
    for key in ITERATION_KEYS:
        if key in event:
            row["iteration"] = int(event[key])
            break
    if "loss" in event:
        row["loss"] = _finite(event["loss"])
    if "lr" in event:
        row["lr"] = _finite(event["lr"])
    if "expert" in event:
        row["expert"] = event["expert"]
    return row


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl; an unparsable line (a write cut short by a kill) is skipped."""
    rows = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode()


def iteration_rows(rows: list[dict]) -> list[dict]:
    """The method's own loss curve: `iteration` rows with an iteration number and a finite loss."""
    return [r for r in rows if r.get("event") == "iteration" and "iteration" in r and r.get("loss") is not None]


class MetricsLog:
    """A `log` callback that records loss events (see the module docstring).

    Args:
        path: the persistent jsonl in the run's work folder, or None (memory only, e.g. the
            CLI's progress bar tracker).
        forward: another `log` callback that receives every event unchanged.
        clock: seconds source (tests).
    """

    def __init__(self, path: str | Path | None = None, *, forward: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path) if path is not None else None
        self.forward = forward
        self.clock = clock
        self._t0 = clock()
        self._old = read_metrics(self.path) if self.path is not None else []
        self._new: list[dict] = []
        self._settled = not self._old      # old rows exist until the first loop event decides their fate
        self._offset = 0.0
        self._last_loss: float | None = None

    def __call__(self, event: dict) -> None:
        row = normalise(event)
        if row is not None:
            if row.get("loss") is not None:
                self._last_loss = row["loss"]
            if not self._settled and row["event"] in ("iteration", "resumed") and "iteration" in row:
                self._settle(row["iteration"] if row["event"] == "resumed" else row["iteration"] - 1)
            row["seconds"] = round(self._offset + self.clock() - self._t0, 3)
            self._new.append(row)
            if self.path is not None and self._settled:
                try:
                    with open(self.path, "a") as f:
                        f.write(json.dumps(row, allow_nan=False) + "\n")
                except OSError as e:
                    raise os_error(e, self.path, "append to the metrics log") from None
        if self.forward is not None:
            self.forward(event)

    def _settle(self, resumed_at: int) -> None:
        """Keeps the old rows up to the last `iteration` row at or before `resumed_at`."""
        cut = 0
        for i, r in enumerate(self._old):
            if r.get("event") == "iteration" and r.get("iteration", 0) <= resumed_at:
                cut = i + 1
        self._old = self._old[:cut]
        self._offset = float(self._old[-1].get("seconds", 0.0)) if self._old else 0.0
        for r in self._new:            # pre-loop rows of this process
            r["seconds"] = round(r["seconds"] + self._offset, 3)
        self._settled = True
        self._rewrite()

    def _rewrite(self) -> None:
        if self.path is None:
            return
        write_bytes(self.path, jsonl_bytes(self._old + self._new), fsync=False)

    def rows(self) -> list[dict]:
        """Every row of the run (kept rows of earlier attempts first). A run that never
        reached a loop event resumed nothing, so earlier attempts' rows are dropped."""
        return (self._old if self._settled else []) + self._new

    def last_loss(self) -> float | None:
        """The most recent finite loss seen (for a progress bar), or None."""
        return self._last_loss

    def loss_text(self) -> str:
        """`loss 0.1234` for a progress column; empty before the first loss."""
        return "" if self._last_loss is None else f"loss {self._last_loss:.4g}"
