"""The generated fuzz corpus (tests/fuzz/corpus.py) against the exit-code contract of dcompress/errors.py.

Most cases run in-process through typer's CliRunner; the `proc` sample runs as real
`python -m dcompress.cli` subprocesses (real stderr, a memory cap, a timeout), started in the
background at the first in-process case so that they overlap it. Per case, asserted:

1. the exit code is the expected one;
2. no traceback (in-process: no exception other than SystemExit; subprocess: none on stderr);
3. stdout is exactly one JSON object with `status`; on failure `status == "error"`,
   `exit_code` equal to the exit code and `error` naming the file/key (`expect_in`);
4. the case folder is unchanged on failure (no `-o`, no `.OUT.tmp-*`, no `.OUT.dcompress-work`,
   inputs byte-identical); on success only the case's `out` (and `may_change`) changed.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcompress.cli import app
from tests.fuzz.corpus import CASES, Built, Case, Resources, Result

ROOT = Path(__file__).resolve().parents[2]
INPROC = [c for c in CASES if not c.proc]
PROC = [c for c in CASES if c.proc]
MEM_CAP = 1280 << 20     # heap bytes (RLIMIT_DATA) per subprocess: a runaway allocation fails, not the machine
WORKERS = 2

runner = CliRunner()


# ------------------------------------------------------------------------------------- running

def run_inprocess(argv: list[str]) -> Result:
    t0 = time.time()
    r = runner.invoke(app, argv)
    return Result(r.exit_code, r.stdout, r.stderr, r.exception, round(time.time() - t0, 2))


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEM_CAP, MEM_CAP))


def run_subprocess(argv: list[str], *, cwd: Path | None, timeout: float, cache: Path) -> Result:
    env = {**os.environ, "DCOMPRESS_CACHE": str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DCOMPRESS_DEBUG", None)
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "dcompress.cli", *argv], cwd=cwd or ROOT, env=env, text=True,
                           capture_output=True, timeout=timeout, preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return Result(-9, out, err, None, round(time.time() - t0, 2), timed_out=True)
    return Result(p.returncode, p.stdout, p.stderr, None, round(time.time() - t0, 2))


# ------------------------------------------------------------------------------------- checking

def snapshot(root: Path) -> dict[str, str]:
    """relative path -> "dir" | "link:<target>" | md5 of the file (links are never followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = hashlib.md5(p.read_bytes()).hexdigest()
            else:
                out[rel] = "other"
    return out


def _under(p: Path, roots) -> bool:
    return any(r is not None and (p == r or r in p.parents) for r in roots)


def tree_problems(built: Built, tmp: Path, before: dict, after: dict, ok: bool,
                  quarantine: Path | None = None) -> list[str]:
    """What changed in the case folder that the contract does not allow. A damaged file may be
    kept aside in the case folder or in the cache's `quarantine` folder."""
    roots = [built.out, *built.may_change] if ok else []
    aside = hashlib.md5(built.aside).hexdigest() if (ok and built.aside) else None
    new = sorted(k for k in after if k not in before)
    gone = sorted(k for k in before if k not in after and not _under(tmp / k, roots))
    changed = sorted(k for k in after if k in before and after[k] != before[k] and not _under(tmp / k, roots))
    bad_new = {k for k in new if after[k] != "dir" and not _under(tmp / k, roots) and after[k] != aside}
    for k in new:       # a new folder is fine only when it holds allowed files (an aside copy), not empty
        if after[k] == "dir" and not _under(tmp / k, roots):
            inside = [n for n in new if n.startswith(k + "/") and after[n] != "dir"]
            if not inside or any(n in bad_new for n in inside):
                bad_new.add(k)
    problems = []
    if bad_new:
        problems.append("left behind: " + ", ".join(sorted(bad_new)[:6]))
    if gone:
        problems.append("removed: " + ", ".join(gone[:6]))
    if changed:
        problems.append("modified: " + ", ".join(changed[:6]))
    kept = {v for k, v in after.items() if not _under(tmp / k, [built.out])}
    if quarantine is not None and quarantine.is_dir():
        kept |= set(snapshot(quarantine).values())
    if aside and aside not in kept:
        problems.append("no copy of the damaged file was kept aside")
    return problems


def _summary(r: Result) -> str:
    """One line: the JSON error, else the exception, else the last stderr line."""
    try:
        rep = json.loads(r.stdout)
        if isinstance(rep, dict) and rep.get("status") == "error":
            return f"error: {str(rep.get('error'))[:300]}"
    except ValueError:
        pass
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        return f"{type(r.exception).__name__}: {str(r.exception)[:300]}"
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return f"stderr: {lines[-1][:300]}" if lines else f"stdout: {r.stdout.strip()[:200]!r}"


def check(case: Case, built: Built, r: Result, tmp: Path, before: dict, quarantine: Path | None = None) -> None:
    problems: list[str] = []
    if r.timed_out:
        problems.append(f"did not finish within {case.timeout:.0f} s")
    elif r.code not in case.codes:
        problems.append(f"exit {r.code}, expected {' or '.join(map(str, case.codes))}")
    if "Traceback" in r.stderr:
        problems.append("traceback on stderr")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        problems.append(f"uncaught {type(r.exception).__name__}")
    try:
        rep = json.loads(r.stdout)
        if not isinstance(rep, dict):
            raise ValueError
    except ValueError:
        rep = None
        problems.append(f"stdout is not one JSON object ({r.stdout.strip()[:80]!r})")
    if rep is not None:
        failed = r.code != 0
        if rep.get("status") != ("error" if failed else "ok"):
            problems.append(f"JSON status {rep.get('status')!r}")
        if failed:
            if rep.get("exit_code") != r.code:
                problems.append(f"JSON exit_code {rep.get('exit_code')!r} != {r.code}")
            missing = [s for s in case.expect_in if s not in str(rep.get("error", ""))]
            if missing:
                problems.append(f"error does not name {missing}")
    after = snapshot(tmp)
    problems += tree_problems(built, tmp, before, after, ok=r.code == 0 and not r.timed_out, quarantine=quarantine)
    if r.code == 0 and built.argv[0] in ("distill", "shard") and built.out is not None:
        if not (built.out / "manifest.json").is_file():
            problems.append(f"exit 0 but {built.out.name}/manifest.json was not written")
        leaked = [k for k, v in after.items() if k.startswith(built.out.name + "/") and v != "dir"
                  and b"root:x:0:0" in (tmp / k).read_bytes()]
        if leaked:
            problems.append(f"/etc/passwd content in the output: {leaked[:3]}")
    if built.check is not None:
        try:
            built.check(r)
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        pytest.fail(f"{'; '.join(problems)} | {_summary(r)} | {r.seconds}s", pytrace=False)


# ------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def resources(tmp_path_factory) -> Resources:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        res = Resources(tmp_path_factory.mktemp("fuzz-resources"))
        yield res


def _slug(case: Case) -> str:
    return case.id.replace("/", "-")[:60]


@pytest.fixture(scope="session")
def proc_runs(request, resources, tmp_path_factory):
    """Builds the selected subprocess cases and starts them in the background; id -> (built, tmp, before, future)."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if item.originalname == "test_fuzz_subprocess" and hasattr(item, "callspec")}
    cache = tmp_path_factory.mktemp("fuzz-proc-cache")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)
    runs = {}
    for case in PROC:
        if case.id not in wanted:
            continue
        tmp = tmp_path_factory.mktemp(_slug(case))
        built = case.build(tmp, resources)
        before = snapshot(tmp)
        fut = pool.submit(run_subprocess, built.argv, cwd=built.cwd, timeout=case.timeout, cache=cache)
        runs[case.id] = (built, tmp, before, fut, cache / "quarantine")
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------- tests

def test_corpus_shape():
    """At least 150 distinct malformed inputs over every family; unique ids."""
    from tests.fuzz.corpus import FAMILIES

    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    malformed = [c for c in CASES if c.codes != (0,)]
    assert len(malformed) >= 150, len(malformed)
    assert {c.family for c in malformed} == set(FAMILIES)
    assert 10 <= len(PROC) <= 16


@pytest.mark.parametrize("case", INPROC, ids=[c.id for c in INPROC])
def test_fuzz(case: Case, resources: Resources, proc_runs, tmp_path: Path, monkeypatch):
    built = case.build(tmp_path, resources)
    before = snapshot(tmp_path)
    if built.cwd is not None:
        monkeypatch.chdir(built.cwd)
    r = run_inprocess(built.argv)
    check(case, built, r, tmp_path, before, quarantine=Path(os.environ["DCOMPRESS_CACHE"]) / "quarantine")


@pytest.mark.parametrize("case", PROC, ids=[c.id for c in PROC])
def test_fuzz_subprocess(case: Case, proc_runs):
    built, tmp, before, fut, quarantine = proc_runs[case.id]
    check(case, built, fut.result(), tmp, before, quarantine=quarantine)
