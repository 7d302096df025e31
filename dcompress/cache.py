"""`dcompress cache ls|rm|prune`: what the cache holds and how to reclaim it. Torch-free.

The cache (`--cache-dir`, `DCOMPRESS_CACHE`, default ~/.cache/dcompress) holds

    stores/<key>/          decoded stores of inputs (io.store), one per input + decode options
    teachers/<name>.pt     teachers trained on an input (+ .json sidecar)
    experts/<name>/        default expert buffers of MTT/DATM runs
    quarantine/<name>      damaged checkpoints, teachers and stores moved aside
    evaluations/<key>.json finished runs of an interrupted `evaluate` (removed when it completes)

An entry's name is `<kind>/<name>` (what `ls` prints and `rm` takes). A store that a running
command has open (shared `flock` on `stores/<key>.lock`) is never removed: `rm` says it is busy
(exit 8), `prune` skips it. Leftovers of killed builders (`*.tmp-<pid>`) are always pruned.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BusyError, UsageError, os_error
from .io.safe_write import pid_alive

KINDS = ("stores", "teachers", "experts", "quarantine", "evaluations")


def cache_root() -> Path:
    """The cache folder: DCOMPRESS_CACHE (which `--cache-dir` sets), else ~/.cache/dcompress."""
    return Path(os.environ.get("DCOMPRESS_CACHE", Path.home() / ".cache" / "dcompress"))


@dataclass
class Entry:
    name: str              # "<kind>/<name>"
    kind: str
    path: str
    bytes: int
    last_used: float       # unix time
    description: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["last_used"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_used))
        return d


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _describe(kind: str, path: Path) -> str:
    try:
        if kind == "stores":
            meta = json.loads((path / "meta.json").read_bytes())
            n, c, h, w = meta["shape"]
            return f"{n} samples {c}x{h}x{w}, {len(meta['class_names'])} classes from {meta.get('description', '?')}"
        if kind == "teachers":
            side = path.with_suffix(".json")
            info = json.loads(side.read_bytes()) if side.is_file() else {}
            return (f"teacher {info.get('model', '?')} (train accuracy {info.get('train_accuracy', '?')}, validation "
                    f"{info.get('val_accuracy', '?')})")
        if kind == "experts":
            return f"expert buffer ({sum(1 for _ in path.glob('replay_buffer_*'))} files)"
        if kind == "evaluations":
            return f"{len(json.loads(path.read_bytes())['runs'])} finished run(s) of an interrupted evaluate"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"
    return "moved aside as damaged"


def _companions(kind: str, path: Path) -> list[Path]:
    """Files that belong to a teacher entry: its .json sidecar and the feature caches made from it."""
    if kind != "teachers":
        return []
    side = [path.with_suffix(".json")] if path.with_suffix(".json").is_file() else []
    return side + sorted(path.parent.glob(path.stem + ".features*.npy"))


def _last_used(kind: str, path: Path) -> float:
    probe = path / "meta.json" if kind == "stores" else path
    try:
        return probe.stat().st_mtime
    except OSError:
        return 0.0


def _children(cache: Path):
    """(kind, path) of everything directly inside each kind's folder, in name order."""
    for kind in KINDS:
        folder = Path(cache) / kind
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                yield kind, p


def entries(cache: Path) -> list[Entry]:
    """Every entry of the cache, oldest use first (temp leftovers and lock files excluded)."""
    found = []
    for kind, p in _children(cache):
        if ".tmp-" in p.name or p.name.endswith(".lock") or (kind == "teachers" and p.suffix != ".pt"):
            continue
        if kind == "stores" and (not p.is_dir() or p.name.startswith("ephemeral-")):
            continue
        size = _size(p) + sum(_size(q) for q in _companions(kind, p))
        found.append(Entry(f"{kind}/{p.name}", kind, str(p), size, _last_used(kind, p), _describe(kind, p)))
    return sorted(found, key=lambda e: e.last_used)


def _holding(entry: Entry, cache: Path):
    """An exclusive non-blocking lock on a store (None for other kinds); BusyError when in use."""
    if entry.kind != "stores":
        return None
    lock = Path(cache) / "stores" / f"{Path(entry.path).name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusyError("decoded store is in use by a running dcompress command; try again when it ends",
                        path=entry.path) from None
    return fd, lock


def _remove(entry: Entry, cache: Path) -> None:
    held = _holding(entry, cache)
    try:
        p = Path(entry.path)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            for q in _companions(entry.kind, p):
                q.unlink(missing_ok=True)
            p.unlink()
        if held is not None:
            held[1].unlink(missing_ok=True)
            held[1].with_name(held[1].name.replace(".lock", ".build.lock")).unlink(missing_ok=True)
    except OSError as e:
        raise os_error(e, entry.path, "remove the cache entry") from None
    finally:
        if held is not None:
            os.close(held[0])


def ls(cache: Path, kind: str | None = None) -> dict:
    if kind is not None and kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    rows = [e for e in entries(cache) if kind is None or e.kind == kind]
    return {"status": "ok", "cache": str(cache), "entries": [e.to_dict() for e in rows],
            "total_bytes": sum(e.bytes for e in rows)}


def rm(cache: Path, names: list[str], *, all_entries: bool = False, kind: str | None = None) -> dict:
    """Removes the named entries (`<kind>/<name>` as `ls` prints them), or all (of `kind`)."""
    if kind is not None and kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if bool(names) == all_entries:
        raise UsageError("name the entries to remove (as `dcompress cache ls` prints them), or pass --all")
    have = {e.name: e for e in entries(cache)}
    if all_entries:
        chosen = [e for e in have.values() if kind is None or e.kind == kind]
    else:
        unknown = [n for n in names if n not in have]
        if unknown:
            raise UsageError(f"no cache entry {unknown[0]!r} in {cache} (see `dcompress cache ls`)")
        chosen = [have[n] for n in names]
    for e in chosen:
        _remove(e, cache)
    return {"status": "ok", "cache": str(cache), "removed": [e.name for e in chosen],
            "freed_bytes": sum(e.bytes for e in chosen)}


def parse_size(text: str) -> int:
    """'50G', '800M', '1.5T', '1024' -> bytes (binary units)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise UsageError(f"--max-size must be a size such as 50G or 800M, got {text!r}") from None
    if value < 0:
        raise UsageError(f"--max-size must be >= 0, got {text!r}")
    return int(value * units[unit])


def prune(cache: Path, *, older_than_days: float | None = None, max_size: str | None = None,
          dry_run: bool = False) -> dict:
    """Removes entries unused for more than `older_than_days`, then the least recently used until
    the cache fits `max_size`; stores in use are skipped. Leftovers of killed writers always go."""
    if older_than_days is not None and older_than_days < 0:
        raise UsageError(f"--older-than must be >= 0 days, got {older_than_days}")
    limit = parse_size(max_size) if max_size is not None else None
    leftovers = _dead_leftovers(cache)
    rows = entries(cache)
    now = time.time()
    chosen = [e for e in rows if older_than_days is not None and now - e.last_used > older_than_days * 86400]
    if limit is not None:
        total = sum(e.bytes for e in rows if e not in chosen)
        for e in rows:                                          # least recently used first
            if total <= limit:
                break
            if e not in chosen:
                chosen.append(e)
                total -= e.bytes
    removed, busy = [], []
    for e in chosen:
        if dry_run:
            removed.append(e)
            continue
        try:
            _remove(e, cache)
            removed.append(e)
        except BusyError:
            busy.append(e.name)
    if not dry_run:
        for p in leftovers:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return {"status": "ok", "cache": str(cache), "dry_run": dry_run, "removed": [e.name for e in removed],
            "freed_bytes": sum(e.bytes for e in removed), "skipped_in_use": busy,
            "leftovers_removed": [str(p) for p in leftovers]}


def _dead_leftovers(cache: Path) -> list[Path]:
    """Temp files/folders (`*.tmp-<pid>`, `ephemeral-<pid>-*`) whose writer is no longer alive."""
    dead = []
    for _, p in _children(cache):
        pid = None
        if ".tmp-" in p.name:
            pid = p.name.rsplit(".tmp-", 1)[1]
        elif p.name.startswith("ephemeral-"):
            pid = p.name.split("-")[1]
        if pid is not None and pid.isdigit() and not pid_alive(int(pid)):
            dead.append(p)
    return dead
