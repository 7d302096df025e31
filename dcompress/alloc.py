"""Process-wide tuning of glibc's allocator for CPU runs (docs/performance.md).

glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB by default)
with a fresh `mmap` and gives it back with `munmap` on free. On the CPU each ConvNet-3 forward
of a 256-image real batch allocates activations of 134 MB, so every forward faults that memory
in again page by page: about 188k minor page faults per forward, which doubled the time of the
forward on this machine (0.9 s -> 0.4 s once the faults were gone) and cost more on a loaded host.

`tune_malloc()` raises the mmap threshold to 2 GiB and turns heap trimming off (`mallopt`),
so a freed activation stays in the heap and the next iteration reuses its pages. The trade-off:
the heap keeps its high-water mark, and glibc's aligned allocations (torch asks for 64-byte
alignment) leave holes that a same-sized request cannot reuse, so the peak RSS of DM, DC and
DSA runs rose by 10-45 %; it is reached in the first iteration or two and then stays flat
(docs/performance.md; jemalloc or tcmalloc, preloaded, are as fast without it). `release_memory()` hands free heap memory back
(`malloc_trim`) when a long-lived process is done with a large computation.

The CLI calls `tune_malloc()` at start-up; API users call it themselves, early. Set
`DCOMPRESS_MALLOC_TUNE=0` to turn it off. It does nothing (and says why) on a non-glibc
system or when another allocator (jemalloc, tcmalloc, mimalloc) is preloaded.
"""
from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

ENV_VAR = "DCOMPRESS_MALLOC_TUNE"
# mallopt parameter numbers (glibc <malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# mallopt takes an int: the largest threshold it can express. The glibc measured here (2.36)
# accepts it and then serves a 200 MB request from the heap; older glibc refused anything above
# 32 MiB (mallopt returns 0: reported, nothing set). Allocations of 2 GiB or more stay mmapped.
MMAP_THRESHOLD = 2**31 - 1
# -1 disables trimming (mallopt(3)); a finite value (at most 2 GiB) let DM's batched form, whose
# activations are 1.3 GB, trim and fault 0.9M pages per iteration again.
TRIM_THRESHOLD = -1
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


@dataclass(frozen=True)
class MallocTuning:
    """What `tune_malloc` did.

    Attributes:
        applied: True when the thresholds are set in this process.
        reason: why not, or what was set (one line for logs).
        mmap_threshold, trim_threshold: the values set (bytes; trim -1 = never trim), None
            when not applied.
    """

    applied: bool
    reason: str
    mmap_threshold: int | None = None
    trim_threshold: int | None = None


_state: MallocTuning | None = None


def _disabled_by_env() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it (musl does not)
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(enable: bool | None = None) -> MallocTuning:
    """Keeps large freed buffers in the heap for reuse (glibc `mallopt`), once per process.

    Call it early, before the first large tensors are allocated (it applies to every later
    allocation). Repeated calls return the first call's result.

    Args:
        enable: False skips tuning; None (default) reads `DCOMPRESS_MALLOC_TUNE` (on unless
            it is 0/false/no/off).

    Returns:
        MallocTuning saying whether the thresholds were set and why not.
    """
    global _state
    if _state is not None:
        return _state
    preload = os.environ.get("LD_PRELOAD", "")
    if enable is False or (enable is None and _disabled_by_env()):
        _state = MallocTuning(False, f"disabled ({ENV_VAR}=0 or enable=False)")
    elif any(name in preload for name in _OTHER_ALLOCATORS):
        _state = MallocTuning(False, f"another allocator is preloaded (LD_PRELOAD={preload})")
    elif (libc := _glibc()) is None:
        _state = MallocTuning(False, "not glibc on Linux")
    elif libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        _state = MallocTuning(False, "mallopt refused the thresholds")
    else:
        _state = MallocTuning(True, f"glibc mmap threshold {MMAP_THRESHOLD} B, heap never trimmed",
                              MMAP_THRESHOLD, TRIM_THRESHOLD)
    return _state


def release_memory() -> bool:
    """Returns free heap memory to the system (glibc `malloc_trim(0)`).

    Useful after a large computation in a long-lived process that called `tune_malloc`.
    Returns True when memory was released, False when none was (or not glibc).
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


__all__ = ["ENV_VAR", "MallocTuning", "release_memory", "tune_malloc"]
