"""Exceptions a user can act on, each with its own exit code.

The CLI maps these to exit codes in one place (`cli._run`); the API raises them as is.
Anything else that escapes (an OSError from a full disk, MemoryError, a bug) is mapped there
too, so a user never sees a traceback unless `DCOMPRESS_DEBUG=1` is set.

| code | exception          | meaning                                                         |
|------|--------------------|-----------------------------------------------------------------|
| 0    | —                  | success                                                         |
| 1    | DcompressError     | runtime failure (non-finite loss, internal error)               |
| 2    | UsageError         | bad option, config key/value, unknown method, `-o` overlaps input |
| 3    | TooManyBadSamples  | more corrupt/undecodable input samples than `--max-bad`         |
| 4    | InputDataError     | input is unusable: empty, mixed shapes, bad labels, bad manifest |
| 5    | OutputError        | output/cache location unusable: foreign contents, not writable  |
| 6    | VerifyError        | `verify` found a checksum or count mismatch                     |
| 7    | ResourceError      | out of disk space or memory                                     |
| 8    | BusyError          | another live dcompress process holds the output's lock          |
| 9    | GateFailed         | `evaluate`/`frontier` `--min-accuracy/--min-gain-over-random` missed |
| 130  | (SIGINT)           | interrupted by Ctrl-C; the checkpoint is kept for `--resume`    |
| 143  | (SIGTERM)          | terminated; the checkpoint is kept for `--resume`               |
"""
from __future__ import annotations


class DcompressError(Exception):
    """Base class; exit code 1 (runtime failure)."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        where = []
        if path:
            where.append(str(path))
        if key:
            where.append(f"key {key!r}")
        self.path, self.key, self.detail = path, key, message
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class UsageError(DcompressError):
    exit_code = 2


class TooManyBadSamples(DcompressError):
    exit_code = 3


class InputDataError(DcompressError):
    exit_code = 4


class OutputError(DcompressError):
    exit_code = 5


class VerifyError(DcompressError):
    exit_code = 6


class ResourceError(DcompressError):
    """The machine ran out of something (disk space, memory); nothing half-written is left."""

    exit_code = 7


class BusyError(DcompressError):
    """Another live process is writing the same output (or expert slot)."""

    exit_code = 8


class GateFailed(DcompressError):
    """A CI gate of `evaluate` missed: the report itself says which (status "gate_failed"), so
    the CLI prints it as any report and exits with this code."""

    exit_code = 9


class Interrupted(DcompressError):
    """SIGINT (130) or SIGTERM (143): the run stopped; its checkpoint stays for `--resume`."""

    def __init__(self, message: str, *, signum: int):
        self.exit_code = 128 + signum
        super().__init__(message)


class NonFiniteLoss(DcompressError):
    """A synthesis loss became NaN/inf; the last good checkpoint is kept."""

    exit_code = 1


def unreadable(e: OSError, path=None, what: str = "input") -> InputDataError:
    """Our exception for an input file or folder this process cannot read (exit 4, naming it:
    an unreadable input is never reported as an unusable output)."""
    return InputDataError(f"cannot read {what}: {e.strerror or e}", path=str(e.filename or path))


def os_error(e: OSError, path=None, action: str = "write", *, writing: bool = True) -> DcompressError:
    """Our exception for an OSError met while doing `action` on `path` (default: the error's own
    filename): a full disk or quota is a ResourceError (7); a read-only, forbidden or misplaced
    location an OutputError (5), as is any other failure while `writing`; else a DcompressError (1)."""
    import errno

    path = str(path) if path is not None else (e.filename or None)
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM):
        return ResourceError(f"cannot {action}: {why} (free some space or choose another location)", path=path)
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(f"cannot {action}: {why} (location is read-only or not writable)", path=path)
    if writing or e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return OutputError(f"cannot {action}: {why}", path=path)
    return DcompressError(f"cannot {action}: {why}", path=path)
