"""Checkpointer and io.safe_write: round trip, damaged or foreign state survived, nothing unpickled.

Disk-full and read-only locations need a real filesystem: tests/integration/test_faults.py.
"""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch

from dcompress import faults
from dcompress.checkpoint import Checkpointer
from dcompress.errors import OutputError, ResourceError, os_error
from dcompress.io.safe_write import atomic_write, move_aside, np_save, remove_dead_temps, torch_save, write_json

IDENTITY = {"method": "dm", "seed": 0, "ipc": 2}


def state(it: int) -> dict:
    return {"iteration": it, "images": torch.arange(6.0).reshape(2, 3) * it, "generator": torch.Generator().get_state()}


class Evil:
    """Pickles to "call open(marker, 'w')": the file appears iff something unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def ckpt(tmp_path, identity=IDENTITY, **kw):
    events = []
    return Checkpointer(tmp_path / "work", identity, every=2, log=events.append, **kw), events


def test_round_trip_and_due(tmp_path):
    c, events = ckpt(tmp_path)
    assert c.load() is None and c.resumed_from is None
    assert [c.due(i) for i in range(5)] == [False, False, True, False, True]
    c.save(state(2))
    c.save(state(4))
    c2, _ = ckpt(tmp_path)
    s = c2.load()
    assert s["iteration"] == 4 and c2.resumed_from == 4 and torch.equal(s["images"], state(4)["images"])
    assert not list(c2.dir.glob("*.tmp-*")) and events == []
    assert json.loads((c2.dir / "run.json").read_text())["identity"] == IDENTITY


def test_other_run_or_no_resume_starts_fresh(tmp_path):
    c, _ = ckpt(tmp_path)
    c.save(state(2))
    other, _ = ckpt(tmp_path, {**IDENTITY, "seed": 1})
    assert other.load() is None
    c, _ = ckpt(tmp_path)
    c.save(state(2))
    again, _ = ckpt(tmp_path, resume=False)
    assert again.load() is None


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "tensor", "no_iteration"])
def test_damaged_state_is_moved_aside_with_a_warning(tmp_path, damage):
    c, events = ckpt(tmp_path)
    c.save(state(2))
    good = c.path.read_bytes()
    if damage == "truncated":
        c.path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        c.path.write_bytes(os.urandom(300))
    elif damage == "empty":
        c.path.write_bytes(b"")
    elif damage == "tensor":
        torch.save(torch.zeros(3), c.path)
    else:
        torch.save({"images": torch.zeros(3)}, c.path)
    bad = c.path.read_bytes()
    c2, events = ckpt(tmp_path)
    assert c2.load() is None and c2.resumed_from is None
    moved = list(c2.dir.glob("state.pt.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == bad and not c2.path.exists()
    assert len(events) == 1 and events[0]["event"] == "warning" and "state.pt" in events[0]["message"]
    c2.save(state(2))   # and the run goes on checkpointing
    assert ckpt(tmp_path)[0].load()["iteration"] == 2


def test_a_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    c, events = ckpt(tmp_path)
    torch.save({"iteration": 2, "payload": Evil(marker)}, c.path)
    assert not marker.exists()
    assert c.load() is None
    assert not marker.exists(), "torch.load ran a pickled callable"
    assert list(c.dir.glob("state.pt.corrupt-*")) and "refused by the weights-only loader" in events[0]["message"]
    # torch's advice (re-run with weights_only=False, allowlist globals) is never quoted, nor cut mid-sentence
    assert "weights_only" not in events[0]["message"] and "safe_globals" not in events[0]["message"]


def test_run_json_not_json_is_moved_aside_and_state_dropped(tmp_path):
    c, _ = ckpt(tmp_path)
    c.save(state(2))
    (c.dir / "run.json").write_text('{"key": "abc')
    c2, events = ckpt(tmp_path)
    assert c2.load() is None   # cannot tell whose state it was: not resumed
    assert len(list(c2.dir.glob("run.json.corrupt-*"))) == 1
    assert json.loads((c2.dir / "run.json").read_text())["key"] == c2.key
    assert events and "run.json" in events[0]["message"]


def test_without_a_log_the_warning_is_a_python_warning(tmp_path):
    c = Checkpointer(tmp_path / "w", IDENTITY)
    c.path.write_bytes(b"junk")
    with pytest.warns(RuntimeWarning, match="state.pt"):
        assert c.load() is None


def test_dead_writers_temp_files_are_removed(tmp_path):
    c, _ = ckpt(tmp_path)
    dead = c.dir / "state.pt.tmp-999999999"
    mine = c.dir / f"state.pt.tmp-{os.getpid()}"
    dead.write_bytes(b"x")
    mine.write_bytes(b"x")
    ckpt(tmp_path)
    assert not dead.exists() and mine.exists()


# --------------------------------------------------------------------------------------------
# safe_write


def test_atomic_write_keeps_the_old_file_on_an_exception(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old" and list(tmp_path.iterdir()) == [p]


@pytest.mark.parametrize("code,exc", [(errno.ENOSPC, ResourceError), (errno.EDQUOT, ResourceError),
                                      (errno.EROFS, OutputError), (errno.EACCES, OutputError),
                                      (errno.EIO, OutputError)])
def test_os_errors_map_to_our_exceptions(code, exc, tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(exc) as ei:
        atomic_write(p, fail)
    assert str(p) in str(ei.value) and type(os_error(OSError(code, "x"), p)) is exc
    assert p.read_bytes() == b"old" and list(tmp_path.iterdir()) == [p]


def test_np_and_torch_save_round_trip_without_pickles(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    np_save(tmp_path / "a.npy", arr)
    assert np.array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), arr)
    with pytest.raises(ValueError):
        np_save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    assert not list(tmp_path.glob("o.npy*"))
    torch_save(tmp_path / "t.pt", {"w": torch.ones(2)})
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.ones(2))
    write_json(tmp_path / "j.json", {"a": 1})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": 1}


def test_move_aside_and_dead_temps(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"1")
    a = move_aside(p)
    p.write_bytes(b"2")
    b = move_aside(p)
    assert a != b and a.read_bytes() == b"1" and b.read_bytes() == b"2" and ".corrupt-" in a.name
    assert move_aside(p) is None
    (tmp_path / "f.npy.tmp-999999999").write_bytes(b"")
    (tmp_path / "g.tmp-999999999.npy").write_bytes(b"")
    (tmp_path / f"h.tmp-{os.getpid()}").write_bytes(b"")
    assert sorted(p.name for p in remove_dead_temps(tmp_path)) == ["f.npy.tmp-999999999", "g.tmp-999999999.npy"]


def test_crash_point_parsing(monkeypatch):
    assert faults._parse("a.b:3") == ("a.b", 3) and faults._parse("a") == ("a", 1) and faults._parse("") is None
    monkeypatch.setenv(faults.ENV, "somewhere.else")
    faults.reset()
    try:
        faults.crash_point("ckpt.saved")   # another point: nothing happens
        assert faults._hits == {}
    finally:
        monkeypatch.delenv(faults.ENV)
        faults.reset()
