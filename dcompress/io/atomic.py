"""Output folders: exclusive, never overlapping the input, and swapped in atomically.

A run that writes `OUT`:
1. takes `OUT`'s lock (`.OUT.lock`, an `flock`: the kernel releases it when the holder dies,
   so a kill -9 never leaves a lock that blocks the next run); a second live writer gets
   BusyError (exit 8) naming the holder;
2. refuses an `OUT` that overlaps its input (`check_not_input`) or holds something that is not
   a dcompress output of this kind, and never replaces an existing output without `--overwrite`
   (`check_target`);
3. builds the new folder in `.OUT.tmp-<pid>` and swaps it in: one `renameat2(RENAME_EXCHANGE)`
   where the kernel and filesystem support it, else two renames (a kill between them leaves the
   previous output in `.OUT.old-<pid>`, which the next run puts back).
Leftovers of killed writers (`.OUT.tmp-*`, `.OUT.old-*`) are cleaned by the next lock holder.

`one_at_a_time(path)` is the waiting kind of lock, for a cache entry that several processes may
want at once and one must make (a random side, the full-data network, a teacher); `made_once`
is the look / lock / look again / make sequence built on it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ..errors import BusyError, OutputError, UsageError, os_error
from ..faults import crash_point
from .manifest import MANIFEST


def output_kind(path: Path) -> str | None:
    """"compressed" / "input" / "experts" for a folder dcompress wrote, else None."""
    m = path / MANIFEST
    if not m.is_file():
        return None
    try:
        obj = json.loads(m.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    if obj.get("format") == "dcompress-experts":
        return "experts"
    block = obj.get("dcompress")
    return str(block.get("kind", "compressed")) if isinstance(block, dict) else None


def is_dcompress_output(path: Path) -> bool:
    return output_kind(path) is not None


def describe_output(path: Path) -> str:
    """One line saying what an existing dcompress output holds (for refusal messages)."""
    try:
        block = json.loads((path / MANIFEST).read_bytes())["dcompress"]
        m = block.get("method", {})
        if block.get("kind") == "input":
            return f"dcompress input shards ({block.get('num_samples', '?')} samples)"
        return f"a {m.get('name', '?')} output (IPC {m.get('ipc', '?')}, {block.get('num_samples', '?')} samples, " \
               f"seed {m.get('seed', '?')})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "a dcompress output"


def check_target(target: Path, *, kind: str = "compressed", overwrite: bool = False) -> bool:
    """Checks that `target` may receive an output of `kind`; True when it already holds one.

    OutputError (exit 5): a regular file, or a non-empty folder dcompress did not write.
    UsageError (exit 2): a dcompress folder of another kind, or one of this kind without
    `overwrite` (the caller may still accept it as up to date: see api.distill).
    """
    if target.exists() and not target.is_dir():
        raise OutputError("output path exists and is not a folder", path=str(target))
    if not target.is_dir() or not any(target.iterdir()):
        return False
    have = output_kind(target)
    if have is None:
        raise OutputError("output folder is not empty and is not a dcompress output; "
                          "choose another -o or empty it", path=str(target))
    if have != kind:
        raise UsageError(f"output folder holds {describe_output(target) if have != 'experts' else 'an expert buffer'}"
                         f", not a {kind} output; choose another -o", path=str(target))
    return True


def refuse_existing(target: Path) -> UsageError:
    return UsageError(f"output folder already holds {describe_output(target)}; pass --overwrite to replace it",
                      path=str(target))


def check_not_input(target: Path, files: list[str], folders: list[Path]) -> None:
    """UsageError (exit 2) when `target` equals or contains an input shard, or equals, contains or
    lies inside an input folder: writing there would replace the input."""
    t = Path(target).resolve()
    for f in files:
        p = Path(f).resolve()
        if p == t or t in p.parents:
            raise UsageError(f"-o {target} would replace input shard {f}; choose an output outside the input",
                             path=str(target))
    for d in folders:
        d = Path(d).resolve()
        if d == t or t in d.parents or d in t.parents:
            raise UsageError(f"-o {target} overlaps the input folder {d}; choose an output outside the input",
                             path=str(target))


def work_dir_for(target: Path) -> Path:
    """Private scratch folder (checkpoints) of the run writing `target`."""
    return target.parent / f".{target.name}.dcompress-work"


class OutputLock:
    """Exclusive lock on an output path, held as `with OutputLock(target): ...`.

    The lock file holds the owner's pid, host and start time for the BusyError message; it is
    removed on release. flock on the open file is the lock itself, so a killed owner's lock
    lapses with its process.
    """

    def __init__(self, target: str | Path, what: str = "output"):
        self.target = Path(target).absolute()
        self.path = self.target.parent / f".{self.target.name}.lock"
        self.what = what
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.created = [p for p in self.target.parents if not p.exists()]   # innermost first
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, action=f"create the {self.what}'s parent folder") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise os_error(e, self.path, f"lock the {self.what}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise BusyError(f"another dcompress process is writing this {self.what} ({holder}); wait for "
                                "it to finish or stop it", path=str(self.target)) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:      # else the previous holder unlinked it between our open and flock: retry
                break
            os.close(fd)
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        self.fd = fd
        clean_leftovers(self.target)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)
                self.fd = None
        if not self.target.exists():           # a failed run leaves no parent folders it created
            for folder in self.created:
                try:
                    folder.rmdir()
                except OSError:
                    break


def wait_flock(fd: int, mode: int, note: Callable[[str], None] | None, path: Path, what: str) -> None:
    """flock(fd, mode), saying through `note` that this process waits when another holds it."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        if note is not None:
            note(f"waiting for another dcompress process {what} ({path})")
        fcntl.flock(fd, mode)


@contextlib.contextmanager
def one_at_a_time(path: Path, note: Callable[[str], None] | None = None, what: str = "") -> Iterator[None]:
    """Runs the block holding an exclusive flock on `path` (created, removed on release): the
    other processes that reach it wait, then run it in turn; a caller re-checks its cache entry
    inside, so the entry is made once and read by the others. A killed holder's lock lapses."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, path, f"create the lock file{' for ' + what if what else ''}") from None
        try:
            wait_flock(fd, fcntl.LOCK_EX, note, path, what)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same:          # else the previous holder removed it while we waited: take the new one
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


T = TypeVar("T")


def made_once(lock: Path, find: Callable[[], T | None], make: Callable[[], T], *,
              note: Callable[[str], None] | None = None, what: str = "") -> T:
    """A cache entry made by one process when several want it at once: `find()` (None when it
    is not there yet), else under `one_at_a_time(lock)` `find()` again (another process may
    have made it while this one waited), else `make()`, which stores it. `lock`'s folder is
    created (io.safe_write.ensure_dir: OutputError / ResourceError naming it)."""
    found = find()
    if found is not None:
        return found
    from .safe_write import ensure_dir

    ensure_dir(lock.parent)
    with one_at_a_time(lock, note, what):
        found = find()
        return found if found is not None else make()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])} on {info.get('host', '?')} since {started}"
    except (ValueError, KeyError, TypeError, OSError):
        return "holder unknown"


def clean_leftovers(target: Path) -> list[str]:
    """Removes temp folders/files of killed writers of `target` (call with its lock held).

    A `.OUT.old-<pid>` left by a kill between the two renames of a swap is the previous
    complete output: it is put back when `OUT` is missing, else removed.
    """
    removed = []
    parent, name = target.parent, target.name
    for p in sorted(parent.glob(f".{name}.old-*")):
        if not target.exists():
            os.replace(p, target)
            removed.append(f"{p} (restored)")
        else:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
    for p in parent.glob(f".{name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(str(p))
    return removed


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


class AtomicDir:
    """Context manager: `with AtomicDir(target) as tmp: write into tmp` then swap.

    On an exception the temporary folder is removed and `target` is untouched. The caller
    holds `OutputLock(target)` and has decided whether an existing output may be replaced;
    a folder dcompress did not write, or of another `kind`, is never replaced.
    """

    def __init__(self, target: str | Path, kind: str = "compressed"):
        self.target = Path(target).absolute()
        check_target(self.target, kind=kind, overwrite=True)
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir()
        except OSError as e:
            raise os_error(e, action="create the output folder") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise os_error(exc, action="write the output") from None
            return
        try:
            if self.target.exists() and _exchange(self.tmp, self.target):
                crash_point("atomic.swap")                         # new output in place, old one in tmp
                shutil.rmtree(self.tmp, ignore_errors=True)
                return
            old = None
            if self.target.exists():
                old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
                os.replace(self.target, old)
            crash_point("atomic.swap")                             # old output aside, new one not yet in
            os.replace(self.tmp, self.target)
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise os_error(e, self.target, "swap in the output") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
