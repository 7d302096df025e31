"""dcompress.io.metrics (event normalisation, persistence, resume) and dcompress.io.figures."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dcompress.io.figures import MAX_ROWS, class_grid, font, grid_layout, loss_curve, png_bytes
from dcompress.io.metrics import MetricsLog, normalise, read_metrics


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def its(rows):
    return [r["iteration"] for r in rows if r["event"] == "iteration"]


def test_normalise_unifies_iteration_keys_and_drops_events_without_loss():
    assert normalise({"event": "iteration", "method": "dm", "iteration": 3, "loss": 1.5}) == \
        {"event": "iteration", "iteration": 3, "loss": 1.5}
    assert normalise({"event": "iteration", "it": 4, "loss": 2, "lr": 0.01, "expert": 1, "start_epoch": 2}) == \
        {"event": "iteration", "iteration": 4, "loss": 2.0, "lr": 0.01, "expert": 1}
    assert normalise({"event": "teacher_epoch", "epoch": 2, "loss": 0.5}) == \
        {"event": "teacher_epoch", "iteration": 2, "loss": 0.5}
    assert normalise({"event": "resumed", "iteration": 50}) == {"event": "resumed", "iteration": 50}
    assert normalise({"event": "memory_mode", "mode": "checkpointed"}) is None
    assert normalise({"event": "iteration", "it": 1, "loss": float("nan")})["loss"] is None   # strict JSON


def test_rows_get_seconds_go_to_the_file_and_every_event_is_forwarded(tmp_path):
    seen = []
    log = MetricsLog(tmp_path / "m.jsonl", forward=seen.append, clock=Clock())
    assert log.last_loss() is None and log.loss_text() == ""
    log({"event": "memory_mode", "mode": "x"})
    for i in range(1, 4):
        log({"event": "iteration", "it": i, "loss": 1.0 / i})
    assert len(seen) == 4 and seen[0]["event"] == "memory_mode"
    rows = read_metrics(tmp_path / "m.jsonl")
    assert rows == log.rows() and its(rows) == [1, 2, 3]
    assert [r["seconds"] for r in rows] == [1.0, 2.0, 3.0]
    assert log.last_loss() == pytest.approx(1 / 3) and log.loss_text() == "loss 0.3333"
    assert all(json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines())


def run_killed(path, upto: int) -> None:
    log = MetricsLog(path, clock=Clock())
    for i in range(1, upto + 1):
        log({"event": "iteration", "iteration": i, "loss": float(i)})


@pytest.mark.parametrize("style", ["resumed_event", "starts_at_next_iteration"])
def test_resume_drops_rows_past_the_checkpoint_and_continues_seconds(tmp_path, style):
    path = tmp_path / "m.jsonl"
    run_killed(path, 5)                      # killed after iteration 5; checkpoint at 3
    with open(path, "a") as f:
        f.write('{"event": "iteration", "iter')  # a line cut short by the kill
    log = MetricsLog(path, clock=Clock())
    if style == "resumed_event":             # DC/DM say so; MTT/DD just continue
        log({"event": "resumed", "iteration": 3})
    for i in (4, 5, 6):
        log({"event": "iteration", "it": i, "loss": float(i)})
    rows = log.rows()
    assert its(rows) == [1, 2, 3, 4, 5, 6]
    secs = [r["seconds"] for r in rows]
    assert secs == sorted(secs) and secs[2] == 3.0 and secs[3] > 3.0
    assert read_metrics(path) == rows


def test_fresh_start_or_no_loop_drops_an_earlier_attempts_rows(tmp_path):
    path = tmp_path / "m.jsonl"
    run_killed(path, 4)                      # killed before any checkpoint
    log = MetricsLog(path, clock=Clock())
    log({"event": "iteration", "iteration": 1, "loss": 9.0})
    assert its(log.rows()) == [1] and its(read_metrics(path)) == [1]
    run_killed(path, 4)
    assert MetricsLog(path).rows() == []      # nothing resumed: old rows are not this run's


def test_loss_curve_draws_iteration_rows_only():
    assert loss_curve([{"event": "teacher_epoch", "iteration": 1, "loss": 1.0}], "t") is None
    rows = [{"event": "iteration", "iteration": i, "loss": 10.0 ** -i} for i in range(1, 8)]   # log scale
    rows.insert(3, {"event": "resumed", "iteration": 3})
    img = loss_curve(rows, "dm: loss")
    assert img.size == (640, 400) and png_bytes(img)[:4] == b"\x89PNG"
    assert png_bytes(loss_curve(rows, "dm: loss")) == png_bytes(img)                        # deterministic
    flat = loss_curve([{"event": "iteration", "iteration": 1, "loss": 2.0}], "one point")
    assert flat is not None


def test_class_grid_size_labels_and_class_cap():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 255, (7, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 0, 0, 1, 2, 2, 2])
    names = ["airplane", "automobile with a very long class name", "bird"]
    img = class_grid(u8, labels, names, "dm, IPC 3", max_per_class=10)
    geo = grid_layout(3, 32, 32, names, "dm, IPC 3", font())
    assert geo["cell"] == (64, 64) and geo["cols"] == 3 and img.size == geo["size"]
    assert img.size[1] == geo["title_h"] + 3 * (64 + 2) + 2
    # the pasted image is there, x2 nearest-neighbour, RGB
    x, y = geo["label_w"] + 2, geo["title_h"] + 2
    assert img.getpixel((x, y)) == tuple(int(v) for v in u8[0, :, 0, 0])
    many = [f"c{i}" for i in range(MAX_ROWS + 5)]
    big = class_grid(np.zeros((0, 1, 8, 8), np.uint8), np.zeros(0, int), many, "t")
    assert big.size[1] == grid_layout(1, 8, 8, many, "t", font())["title_h"] + MAX_ROWS * (8 * 8 + 2) + 2
