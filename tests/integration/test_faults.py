"""The fault suite: kill -9 at every crash point then rerun => identical bytes; damaged checkpoints,
teachers and expert buffers; full and read-only disks; two writers on one output.

Crashes use the `DCOMPRESS_CRASH_AT` hook (dcompress/faults.py). A fresh interpreter costs
~4 s here (torch + torch._dynamo imports), so the crash runs are forked from a "zygote": one
interpreter that imported dcompress once and forks a child per CLI run (a real process,
killed for real by SIGKILL; `os.waitstatus_to_exitcode` gives -9 as `subprocess` would).
One test runs the hook in a fresh `python -m dcompress.cli` to prove the same path there.

Disk tests mount small tmpfs folders (root only; skipped with the reason otherwise); root
ignores permissions, so "read-only" is a read-only remount.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcompress.checkpoint import Checkpointer
from dcompress.cli import app
from dcompress.errors import InputDataError, OutputError, ResourceError
from dcompress.io.manifest import verify
from dcompress.train.buffer import ExpertBuffer, expert_name
from dcompress.train.experts import ExpertConfig, train_experts
from dcompress.train.teacher import Teacher, TeacherConfig, get_teacher, teacher_cache_path, teacher_features
from dcompress.core import RunSpec

ROOT = Path(__file__).resolve().parents[2]
DM = ["--method", "dm", "--ipc", "2", "--set", "iterations=6", "--set", "model=convnet_w16",
      "--set", "batch_real=8", "--ckpt-every", "2", "--shard-size", "2", "--device", "cpu"]
HERDING = ["--method", "herding", "--ipc", "2", "--shard-size", "2", "--device", "cpu"]
ARGS = {"dm": DM, "herding": HERDING}
EXPERTS = ["--num-experts", "2", "--epochs", "2", "--set", "model=convnet_w16", "--device", "cpu", "--json"]
CFG = ExpertConfig(model="convnet_w16", epochs=2)      # what EXPERTS resolves to
# manifest fields that legitimately differ between an uninterrupted run and a killed-then-rerun one
VOLATILE = [("timings",),                               # wall-clock seconds
            ("info", "resumed_from"),                   # the iteration the rerun resumed from
            ("labels", "teacher", "path"),              # the teacher cache lives in each test's cache dir
            ("source", "store"),                        # so does the decoded store
            ("labels", "teacher", "source"),            # "trained" vs "cache" (trained by the killed run)
            ("labels", "teacher", "train_seconds")]     # wall-clock seconds
runner = CliRunner()

ZYGOTE = r"""
import json, os, sys, traceback
import torch, torch._dynamo  # the first optimizer imports torch._dynamo (~2 s): pay it once, here
import dcompress.api, dcompress.cli, dcompress.methods, dcompress.train.experts, dcompress.train.teacher
torch.set_num_threads(1)
print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
        continue
    pid = os.fork()
    if pid:
        print(json.dumps({"pid": pid}), flush=True)
        continue
    code = 1
    try:
        os.environ.clear()
        os.environ.update(cmd["env"])
        os.chdir(cmd["cwd"])
        fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        from dcompress import faults
        faults.reset()
        dcompress.cli.app(args=cmd["argv"], prog_name="dcompress")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
"""


class Zygote:
    """Runs `dcompress ARGS` in processes forked from one pre-imported interpreter."""

    def __init__(self, base: Path):
        self.base, self.n = base, 0
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert self._line(120) == "ready"

    def _line(self, timeout: float) -> str:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.close()
            raise TimeoutError(f"dcompress child did not answer within {timeout} s")
        return self.proc.stdout.readline().strip()

    def _ask(self, obj: dict, timeout: float = 120) -> dict:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line(timeout))

    def start(self, args, *, crash: str | None = None, cache: Path | None = None) -> tuple[int, Path]:
        env = {k: v for k, v in os.environ.items() if k != "DCOMPRESS_CRASH_AT"}
        env["OMP_NUM_THREADS"] = "1"
        if crash:
            env["DCOMPRESS_CRASH_AT"] = crash
        if cache:
            env["DCOMPRESS_CACHE"] = str(cache)
        self.n += 1
        log = self.base / f"run-{self.n}.log"
        pid = self._ask({"op": "start", "argv": [str(a) for a in args], "env": env, "cwd": str(ROOT),
                         "log": str(log)})["pid"]
        return pid, log

    def wait(self, pid: int, timeout: float = 120) -> int:
        return self._ask({"op": "wait", "pid": pid}, timeout)["rc"]

    def run(self, args, **kw) -> tuple[int, str]:
        pid, log = self.start(args, **kw)
        rc = self.wait(pid)
        return rc, log.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


class Evil:
    """Pickles to "call open(marker, 'w')": the file appears iff something unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("data-*.tar"))}


def comparable(manifest_path: Path) -> dict:
    m = json.loads(manifest_path.read_text())
    for keys in VOLATILE:
        d = m["dcompress"]
        for k in keys[:-1]:
            d = d.get(k) or {}
        d.pop(keys[-1], None)
    return m


def last_json(log: str) -> dict:
    return json.loads([ln for ln in log.splitlines() if ln.startswith("{")][-1])


@pytest.fixture(scope="module")
def baselines(zygote, shards, tmp_path_factory):
    """Uninterrupted runs: distill dm, distill herding (each into a folder named `out`), experts."""
    base = tmp_path_factory.mktemp("baseline")
    outs = {}
    for method, args in ARGS.items():
        out = base / method / "out"
        rc, log = zygote.run(["distill", shards["train"], *args, "-o", out, "--json"], cache=base / "cache")
        assert rc == 0, log
        outs[method] = out
    rc, log = zygote.run(["experts", shards["train"], "-o", base / "buf", *EXPERTS])
    assert rc == 0, log
    outs["experts"] = base / "buf"
    return outs


# --------------------------------------------------------------------------------------------
# kill -9, rerun, identical bytes

DISTILL_POINTS = [  # (method, point, resumed_from of the rerun, what -o holds after the kill)
    ("dm", "iter:4", 2, "previous"),             # iteration 4 updated, its checkpoint not yet saved
    ("dm", "ckpt.saved:2", 4, "previous"),       # right after the checkpoint of iteration 4
    ("dm", "ckpt.saved:3", 6, "previous"),       # after the last checkpoint, before any output
    ("dm", "output.sample:3", 6, "previous"),    # shard 0 written, shard 1 half-written
    ("dm", "output.manifest", 6, "previous"),    # every shard written, no manifest yet
    ("dm", "atomic.swap", 6, "swapping"),        # exchanged (new in place) or old aside, new not yet in
    ("dm", "distill.written", 6, "new"),         # output in place, work folder not yet removed
    ("herding", "teacher.save", None, "previous"),      # teacher sidecar written, weights not
    ("herding", "teacher.features", None, "previous"),  # features computed, cache not written
    ("herding", "output.sample:5", None, "previous"),
    ("herding", "output.manifest", None, "previous"),
    ("herding", "atomic.swap", None, "swapping"),
]


@pytest.mark.parametrize("method,point,resumed,after", DISTILL_POINTS,
                         ids=[f"{m}-{p}" for m, p, _, _ in DISTILL_POINTS])
def test_distill_killed_at_a_crash_point_then_rerun_gives_identical_output(
        zygote, baselines, shards, tmp_path, method, point, resumed, after):
    out, cache = tmp_path / "out", tmp_path / "cache"
    previous = baselines["herding" if method == "dm" else "dm"]   # a complete output to be replaced
    shutil.copytree(previous, out)
    args = ["distill", shards["train"], *ARGS[method], "-o", out, "--json", "--overwrite"]

    rc, log = zygote.run(args, crash=point, cache=cache)
    assert rc == -signal.SIGKILL, f"expected death by SIGKILL at {point}, got {rc}:\n{log}"
    if after == "previous":
        assert tree(out) == tree(previous), "-o was modified in place"
    elif after == "swapping":   # renameat2 exchange: the new output is whole; two renames: none yet
        assert not out.exists() or shard_bytes(out) == shard_bytes(baselines[method])
    else:
        assert shard_bytes(out) == shard_bytes(baselines[method])

    rc, log = zygote.run(args, cache=cache)
    assert rc == 0, log
    assert last_json(log)["resumed_from"] == resumed
    assert shard_bytes(out) and shard_bytes(out) == shard_bytes(baselines[method])
    assert comparable(out / "manifest.json") == comparable(baselines[method] / "manifest.json")
    assert verify(out)["ok"]
    assert not (tmp_path / ".out.dcompress-work").exists()


def test_crash_hook_in_a_fresh_interpreter(zygote, baselines, shards, tmp_path):
    """The same hook through `python -m dcompress.cli` (no zygote): die after the first checkpoint."""
    out = tmp_path / "out"
    args = ["distill", str(shards["train"]), *DM, "-o", str(out), "--json"]
    p = subprocess.run([sys.executable, "-m", "dcompress.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "DCOMPRESS_CRASH_AT": "ckpt.saved"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert not out.exists() and (tmp_path / ".out.dcompress-work" / "state.pt").is_file()
    rc, log = zygote.run(args)
    assert rc == 0 and last_json(log)["resumed_from"] == 2, log
    assert shard_bytes(out) == shard_bytes(baselines["dm"])


def test_rerun_after_a_kill_leaves_no_stray_folders(zygote, baselines, shards, tmp_path):
    """Killed mid-swap: the old output sits in .out.tmp-<pid> (exchange) or .out.old-<pid> (renames)."""
    out = tmp_path / "out"
    shutil.copytree(baselines["herding"], out)
    args = ["distill", shards["train"], *DM, "-o", out, "--json", "--overwrite"]
    assert zygote.run(args, crash="atomic.swap")[0] == -signal.SIGKILL
    assert zygote.run(args)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_final_loss_survives_a_resume(zygote, baselines, shards, tmp_path):
    out = tmp_path / "out"
    args = ["distill", shards["train"], *DM, "-o", out, "--json"]
    assert zygote.run(args, crash="ckpt.saved:3")[0] == -signal.SIGKILL
    assert zygote.run(args)[0] == 0
    info = json.loads((out / "manifest.json").read_text())["dcompress"]["info"]
    base = json.loads((baselines["dm"] / "manifest.json").read_text())["dcompress"]["info"]
    assert info["final_loss"] == base["final_loss"]


EXPERT_POINTS = ["experts.claimed", "experts.epoch:2", "experts.epoch:4", "experts.npy", "experts.npy:2",
                 "experts.manifest:2"]


@pytest.mark.parametrize("point", EXPERT_POINTS)
def test_experts_killed_at_a_crash_point_then_rerun_gives_identical_buffer(zygote, baselines, shards, tmp_path,
                                                                            point):
    buf, base = tmp_path / "buf", baselines["experts"]
    args = ["experts", shards["train"], "-o", buf, *EXPERTS]
    rc, log = zygote.run(args, crash=point)
    assert rc == -signal.SIGKILL, f"expected death by SIGKILL at {point}, got {rc}:\n{log}"
    for npy in buf.glob("expert-*.npy"):   # whatever is in place is whole
        assert npy.read_bytes() == (base / npy.name).read_bytes(), npy.name
    rc, log = zygote.run(args)
    assert rc == 0, log
    report = last_json(log)
    assert report["status"] == "ok" and report["experts"] == 2 and report["busy"] == []
    assert sorted(report["trained"] + report["skipped_complete"]) == [0, 1]
    for i in range(2):
        assert (buf / expert_name(i, "npy")).read_bytes() == (base / expert_name(i, "npy")).read_bytes()
        side, base_side = (json.loads((d / expert_name(i, "json")).read_text()) for d in (buf, base))
        assert side["sha256"] == base_side["sha256"]
    assert ExpertBuffer(buf).ids == [0, 1]
    assert json.loads((buf / "manifest.json").read_text())["experts"] == [0, 1]
    assert sorted(p.name for p in buf.iterdir()) == sorted(p.name for p in base.iterdir())   # no tmp, lock


# --------------------------------------------------------------------------------------------
# two writers on one output


def test_a_second_writer_on_the_same_output_exits_8_and_the_first_finishes(zygote, shards, tmp_path):
    out = tmp_path / "out"
    slow = ["distill", shards["train"], "--method", "dm", "--ipc", "2", "--set", "iterations=100",
            "--set", "model=convnet_w16", "--set", "batch_real=8", "--device", "cpu", "-o", out, "--json"]
    pid_a, log_a = zygote.start(slow)
    t0 = time.time()
    while not (tmp_path / ".out.dcompress-work").exists():
        assert time.time() - t0 < 60, "first writer never created its work folder"
        time.sleep(0.05)
    t1 = time.time()
    pid_b, log_b = zygote.start(slow)
    rc_b = zygote.wait(pid_b)
    took = time.time() - t1
    rc_a = zygote.wait(pid_a)
    assert rc_b == 8, log_b.read_text()
    assert str(pid_a) in log_b.read_text() and took < 10
    assert rc_a == 0, log_a.read_text()
    assert verify(out)["ok"] and last_json(log_a.read_text())["samples"] == 6


# --------------------------------------------------------------------------------------------
# damaged teacher: the cache recovers, a user's file is an input error


def spec_for(tmp_path, teacher=None) -> RunSpec:
    return RunSpec(ipc=1, cache_dir=tmp_path / "cache", teacher=teacher)


TINY_TEACHER = TeacherConfig(model="convnet_w16", epochs=1)


@pytest.mark.parametrize("damage", ["truncated", "pickle", "sidecar", "shape"])
def test_unusable_cached_teacher_is_moved_aside_and_retrained(real, tmp_path, damage):
    spec = spec_for(tmp_path)
    first = get_teacher(real, spec, TINY_TEACHER)
    path = teacher_cache_path(real, TINY_TEACHER, spec.cache_dir)
    good = path.read_bytes()
    marker = tmp_path / "pwned"
    if damage == "truncated":
        path.write_bytes(good[:100])
    elif damage == "pickle":
        torch.save({"x": Evil(marker)}, path)
    elif damage == "sidecar":
        path.with_suffix(".json").write_text("{not json")
    else:
        torch.save({"w": torch.zeros(3)}, path)
    events = []
    t = get_teacher(real, spec, TINY_TEACHER, log=events.append)
    assert not marker.exists()
    assert t.info["source"] == "trained" and path.read_bytes() == good   # deterministic retraining
    assert list(path.parent.glob("*.corrupt-*")) and [e["event"] for e in events].count("warning") == 1
    x, cpu = real.get(torch.arange(4)), torch.device("cpu")
    assert torch.equal(t.logits(x, cpu), first.logits(x, cpu))


@pytest.mark.parametrize("damage", ["missing", "no_sidecar", "sidecar_not_json", "sidecar_no_model", "garbage",
                                    "pickle", "wrong_shape"])
def test_unusable_user_teacher_is_an_input_error_naming_the_file(real, tmp_path, damage):
    trained = get_teacher(real, spec_for(tmp_path), TINY_TEACHER)
    user = tmp_path / "mine.pt"
    shutil.copy(trained.info["path"], user)
    shutil.copy(Path(trained.info["path"]).with_suffix(".json"), user.with_suffix(".json"))
    get_teacher(real, spec_for(tmp_path, user))   # the intact copy loads
    named, marker = user, tmp_path / "pwned"
    if damage == "missing":
        user.unlink()
    elif damage == "no_sidecar":
        user.with_suffix(".json").unlink()
        named = user.with_suffix(".json")
    elif damage == "sidecar_not_json":
        user.with_suffix(".json").write_text("[1,")
        named = user.with_suffix(".json")
    elif damage == "sidecar_no_model":
        user.with_suffix(".json").write_text("{}")
        named = user.with_suffix(".json")
    elif damage == "garbage":
        user.write_bytes(b"\x00garbage" * 10)
    elif damage == "pickle":
        torch.save({"x": Evil(marker)}, user)
    else:
        torch.save({k: torch.zeros(2) for k in torch.load(user, weights_only=True)}, user)
    before = tree(tmp_path)
    with pytest.raises(InputDataError) as ei:
        get_teacher(real, spec_for(tmp_path, user))
    assert str(named) in str(ei.value) and not marker.exists()
    assert tree(tmp_path) == before   # the user's files are never moved or rewritten


def test_user_teacher_error_exits_4(shards, tmp_path):
    bad = tmp_path / "t.pt"
    bad.write_bytes(b"junk")
    bad.with_suffix(".json").write_text(json.dumps({"model": "convnet_w32"}))
    r = runner.invoke(app, ["distill", str(shards["train"]), "--method", "random", "--ipc", "1", "--teacher",
                            str(bad), "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 4 and str(bad) in json.loads(r.stdout)["error"]


# --------------------------------------------------------------------------------------------
# damaged expert buffers


def damage_expert(buf: Path, i: int, how: str, marker: Path) -> Path:
    npy, side = buf / expert_name(i, "npy"), buf / expert_name(i, "json")
    if how == "truncated":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif how == "wrong_shape":
        np.save(npy, np.zeros((2, 5), np.float32))
    elif how == "garbage":
        npy.write_bytes(b"not an npy at all" * 20)
    elif how == "object":
        np.save(npy, np.array([Evil(marker)], dtype=object), allow_pickle=True)
    elif how == "sidecar":
        side.write_text('{"expert": 1,')
        return side
    return npy


DAMAGES = ["truncated", "wrong_shape", "garbage", "object", "sidecar"]


@pytest.mark.parametrize("how", DAMAGES)
def test_reading_a_damaged_buffer_is_an_input_error_naming_the_file(baselines, tmp_path, how):
    buf = tmp_path / "buf"
    shutil.copytree(baselines["experts"], buf)
    bad = damage_expert(buf, 1, how, tmp_path / "pwned")
    with pytest.raises(InputDataError) as ei:
        ExpertBuffer(buf)
    assert str(bad) in str(ei.value) and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("how", DAMAGES)
def test_filling_a_damaged_buffer_moves_the_expert_aside_and_retrains_it(baselines, real, tmp_path, how):
    buf = tmp_path / "buf"
    shutil.copytree(baselines["experts"], buf)
    damage_expert(buf, 1, how, tmp_path / "pwned")
    events = []
    report = train_experts(real, buf, num_experts=2, config=CFG, log=events.append)
    assert report["trained"] == [1] and report["skipped_complete"] == [0]
    assert not (tmp_path / "pwned").exists()
    assert [e for e in events if e["event"] == "warning"] and list(buf.glob("expert-00001.*.corrupt-*"))
    for i in range(2):
        assert (buf / expert_name(i, "npy")).read_bytes() == (baselines["experts"] / expert_name(i, "npy")).read_bytes()
    assert ExpertBuffer(buf).ids == [0, 1]


def test_dead_writers_leftovers_are_removed_on_the_next_run(baselines, real, tmp_path):
    buf = tmp_path / "buf"
    shutil.copytree(baselines["experts"], buf)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [buf / f"expert-00002.npy.tmp-{dead.pid}", buf / f"manifest.json.tmp-{dead.pid}",
                 buf / f"expert-00001.json.tmp-{dead.pid}", buf / f"expert-00003.lock.broken-{dead.pid}-17"]
    live = buf / f"expert-00004.npy.tmp-{os.getpid()}"   # a live writer's file stays
    for p in leftovers + [live]:
        p.write_bytes(b"partial")
    report = train_experts(real, buf, num_experts=2, config=CFG)
    assert report["trained"] == [] and not any(p.exists() for p in leftovers) and live.exists()


def test_experts_output_that_is_a_file_exits_5(shards, tmp_path):
    f = tmp_path / "buf"
    f.write_text("a file")
    r = runner.invoke(app, ["experts", str(shards["train"]), "-o", str(f), *EXPERTS])
    assert r.exit_code == 5 and str(f) in json.loads(r.stdout)["error"]
    assert f.read_text() == "a file"


# --------------------------------------------------------------------------------------------
# full disk (ResourceError, exit 7) and read-only location (OutputError, exit 5)


@pytest.fixture
def small_fs(tmp_path):
    """mount(size) -> a fresh tmpfs folder of that size; ro(folder) remounts it read-only."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("disk-full tests mount a small tmpfs, which needs root")
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command")
    mounted = []

    def mount(size: str) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"mount -t tmpfs not permitted here: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


def no_temps(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name]


def test_checkpoint_disk_full_keeps_the_previous_state(small_fs):
    fs = small_fs("64k")
    c = Checkpointer(fs / "work", {"run": 1}, every=1)
    c.save({"iteration": 1, "images": torch.ones(100)})
    with pytest.raises(ResourceError) as ei:
        c.save({"iteration": 2, "images": torch.ones(40000)})   # 160 kB
    assert str(c.path) in str(ei.value) and no_temps(fs)
    assert Checkpointer(fs / "work", {"run": 1}).load()["iteration"] == 1


def test_checkpoint_in_a_read_only_location(small_fs):
    fs = small_fs("64k")
    c = Checkpointer(fs / "work", {"run": 1}, every=1)
    c.save({"iteration": 1})
    read_only(fs)
    with pytest.raises(OutputError) as ei:
        c.save({"iteration": 2})
    assert str(c.path) in str(ei.value) and c.load()["iteration"] == 1
    with pytest.raises(OutputError) as ei:
        Checkpointer(fs / "other", {"run": 1})
    assert str(fs / "other") in str(ei.value)


def test_distill_on_a_full_disk_exits_7(shards, small_fs):
    fs = small_fs("8k")
    r = runner.invoke(app, ["distill", str(shards["train"]), *DM, "-o", str(fs / "out"), "--json"])
    assert r.exit_code == 7, r.output
    error = json.loads(r.stdout)["error"]
    assert str(fs / ".out.dcompress-work") in error and "No space left" in error and no_temps(fs)
    assert sorted(p.name for p in fs.iterdir()) in ([], [".out.dcompress-work"])   # only a checkpoint may stay


def test_teacher_cache_disk_full_and_read_only(real, small_fs):
    fs = small_fs("8k")   # room for the sidecar, not for the weights
    spec = RunSpec(ipc=1, cache_dir=fs)
    with pytest.raises(ResourceError) as ei:
        get_teacher(real, spec, TeacherConfig(epochs=1))
    assert str(teacher_cache_path(real, TeacherConfig(epochs=1), fs)) in str(ei.value) and no_temps(fs)
    ro = small_fs("64k")
    read_only(ro)
    with pytest.raises(OutputError) as ei:
        get_teacher(real, RunSpec(ipc=1, cache_dir=ro), TINY_TEACHER)
    assert str(ro) in str(ei.value)


def test_feature_cache_disk_full(real, small_fs, tmp_path):
    t = get_teacher(real, spec_for(tmp_path), TINY_TEACHER)
    fs = small_fs("256k")
    for suffix in (".pt", ".json"):
        shutil.copy(Path(t.info["path"]).with_suffix(suffix), fs / f"t{suffix}")
    st = os.statvfs(fs)
    filler = fs / "filler"   # leaves 8 kB: less than the 20 kB of features
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 8192))
    teacher = Teacher(t.net, {**t.info, "path": str(fs / "t.pt")})
    with pytest.raises(ResourceError) as ei:
        teacher_features(teacher, real, torch.device("cpu"))
    assert ".features-" in str(ei.value) and str(fs) in str(ei.value) and no_temps(fs)
    filler.unlink()
    feats = teacher_features(teacher, real, torch.device("cpu"))
    assert feats.shape[0] == len(real) and list(fs.glob("t.features-*.npy"))


def test_expert_buffer_disk_full_keeps_complete_experts(real, small_fs):
    fs = small_fs("100k")   # the manifest and one 68 kB expert fit, a second one does not
    with pytest.raises(ResourceError) as ei:
        train_experts(real, fs / "buf", num_experts=2, config=CFG)
    assert str(fs / "buf" / expert_name(1, "npy")) in str(ei.value)
    assert no_temps(fs) and not list((fs / "buf").glob("*.lock"))
    buf = ExpertBuffer(fs / "buf")
    assert buf.ids == [0] and buf.verify(0)


def test_expert_buffer_read_only_exits_5(shards, small_fs):
    fs = small_fs("64k")
    read_only(fs)
    r = runner.invoke(app, ["experts", str(shards["train"]), "-o", str(fs / "buf"), *EXPERTS])
    assert r.exit_code == 5 and str(fs / "buf") in json.loads(r.stdout)["error"]
