"""Exceptions a user can act on, each with its own exit code.

The CLI maps these to exit codes in one place (`cli.py`); the API raises them as is.

| code | exception          | meaning                                                        |
|------|--------------------|----------------------------------------------------------------|
| 0    | —                  | success                                                        |
| 1    | DcompressError     | runtime failure (non-finite loss, internal error)              |
| 2    | UsageError         | bad option, config key/value, unknown method, bad ratio/ipc    |
| 3    | TooManyBadSamples  | more corrupt/undecodable input samples than `--max-bad`        |
| 4    | InputDataError     | input is unusable: empty, mixed shapes, bad labels, dup keys   |
| 5    | OutputError        | output directory holds something that is not ours              |
| 6    | VerifyError        | `verify` found a checksum or count mismatch                    |
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


class NonFiniteLoss(DcompressError):
    """A synthesis loss became NaN/inf; the last good checkpoint is kept."""

    exit_code = 1
