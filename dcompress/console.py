"""How the CLI talks to people and scripts: progress on stderr, one JSON report on stdout,
and the one place where every exception becomes an exit code (`failure`, `run`).

`--json` prints exactly one JSON object on stdout, also on failure ({"status": "error" |
"interrupted", "error", "error_type", "exit_code"}) and for usage errors that Click itself
detects (`App`). A user never sees a traceback unless DCOMPRESS_DEBUG=1.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from .errors import DcompressError, Interrupted, ResourceError, os_error

err = Console(stderr=True)
out = Console()


def _click_types(name: str) -> tuple[type, ...]:
    """`name` from click and from the copy of click that recent typer versions vendor."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_CLICK_ERRORS, _NO_ARGS, _ABORT, _EXIT = (_click_types(n) for n in ("ClickException", "NoArgsIsHelpError",
                                                                     "Abort", "Exit"))


class App(TyperGroup):
    """Runs every command non-standalone so that Click's own usage errors (missing option,
    unknown flag, bad integer) also honour `--json` and print one `error:` line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except _CLICK_ERRORS as e:
            code = e.exit_code
            if int(os.environ.get("RANK", "0") or 0) != 0:   # torchrun: every rank got the same argv
                sys.exit(code)
            if "--json" in argv:
                print(json.dumps({"status": "error", "error": e.format_message(), "error_type": "UsageError",
                                  "exit_code": code}))
            if isinstance(e, _NO_ARGS):
                err.print(e.format_message(), highlight=False, markup=False)
                sys.exit(code)
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                err.print(ctx.get_usage(), highlight=False, markup=False)
                err.print(f"Try '{ctx.command_path} --help' for help.", highlight=False, markup=False)
            err.print(f"error: {e.format_message()}", highlight=False, markup=False)
            sys.exit(code)
        except _ABORT:
            err.print("error: aborted", highlight=False)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


class Reporter:
    """Progress on stderr: rich bars on a terminal; plain timestamped lines elsewhere (CI logs),
    one per bar at its start, at most every `interval` seconds, and at its end. Also the
    method's `log` sink: the latest loss shows on the bar, notes (resume) print as lines."""

    def __init__(self, interval: float = float(os.environ.get("DCOMPRESS_PROGRESS_INTERVAL", "10"))):
        self.tty = err.is_terminal
        self.interval = interval
        self.loss: float | None = None
        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("{task.fields[loss]}"), console=err, transient=False, disable=not self.tty)
        self.tasks: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.t0 = time.time()
        self.quiet = False                      # torchrun: only rank 0 reports (set by run)

    def __call__(self, done: int, total: int, desc: str) -> None:
        if self.quiet:
            return
        loss = f"loss {self.loss:.4g}" if self.loss is not None else ""
        if self.tty:
            if desc not in self.tasks:
                self.tasks[desc] = self.p.add_task(desc, total=total or None, loss=loss)
            self.p.update(self.tasks[desc], completed=done, total=total or None, loss=loss)
            return
        now = time.time()
        first = desc not in self.last
        if first or now - self.last[desc] >= self.interval or (total and done >= total):
            self.last[desc] = now
            of = f"/{total} ({100 * done / total:.0f}%)" if total else ""
            err.print(f"[{time.strftime('%H:%M:%S')}] {desc}: {done}{of}, {now - self.t0:.0f} s{', ' + loss if loss else ''}",
                      highlight=False, markup=False, soft_wrap=True)

    def event(self, ev: dict) -> None:
        """The `log` callback of methods: keeps the latest loss, prints notes."""
        if isinstance(ev.get("loss"), (int, float)):
            self.loss = float(ev["loss"])
        if ev.get("event") == "note":
            self.note(str(ev.get("text", "")))
        elif ev.get("event") == "warning":
            self.note(f"warning: {ev.get('message', '')}")

    def note(self, text: str) -> None:
        if self.quiet:
            return
        (self.p.console if self.tty else err).print(text, highlight=False, markup=False, soft_wrap=True)

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *a):
        self.p.__exit__(*a)


def _on_sigterm(signum, frame):
    raise Interrupted("terminated (SIGTERM)", signum=signum)


def failure(e: BaseException) -> DcompressError:
    """Any exception -> the DcompressError that says it to a user (exit code included)."""
    if isinstance(e, DcompressError):
        return e
    if isinstance(e, KeyboardInterrupt):
        return Interrupted("interrupted (Ctrl-C)", signum=signal.SIGINT)
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower()) \
            or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e)):
        return ResourceError(f"out of memory ({type(e).__name__}: {str(e)[:200]}); use a smaller batch or input")
    if isinstance(e, OSError):
        return os_error(e, action="run", writing=False)
    return DcompressError(f"internal error ({type(e).__name__}: {e}); please report it with the command line "
                          "(set DCOMPRESS_DEBUG=1 for the traceback)")


def _ranks():
    """`dcompress.dist` when it can matter: under torchrun (WORLD_SIZE > 1) or once the command
    loaded it (it imports torch, ~2 s). None otherwise: one process with no process group, where
    every rank helper is the identity, and a command that needs no torch (verify, inspect,
    cache, methods) must not pay for importing it."""
    if f"{__package__}.dist" in sys.modules or os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        from . import dist

        return dist
    return None


def run(as_json: bool, fn: Callable[[Reporter], dict], show: Callable[[dict], None]) -> None:
    """Runs `fn`, prints its report, maps every exception to an exit code (one place)."""
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if _ranks() is not None:
            _ranks().init()
        with Reporter() as prog:
            prog.quiet = _ranks() is not None and not _ranks().is_main()
            report = fn(prog)
    except _EXIT:
        raise
    except BaseException as raw:  # noqa: BLE001 - the one place exceptions become exit codes
        if os.environ.get("DCOMPRESS_DEBUG") == "1":
            raise
        dist = _ranks()
        e = failure(dist.explain(raw) if dist else raw)
        if dist and dist.active() and dist.will_restart():   # torchrun restarts the job: not its final word
            err.print(f"rank {dist.rank()}: stopped ({e}); torchrun restarts the job", highlight=False,
                      markup=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        first, code = dist.claim_failure(e.exit_code) if dist else (True, e.exit_code)
        if not first:                        # another rank failed first and said why
            raise typer.Exit(code) from None
        where = {"rank": dist.rank(), "world_size": dist.world()} if dist and dist.active() else {}
        prefix = f"rank {dist.rank()} of {dist.world()}: " if where else ""
        hint = getattr(raw, "dcompress_hint", None)
        status = "interrupted" if isinstance(e, Interrupted) else "error"
        if as_json:
            print(json.dumps({"status": status, "error": str(e), "error_type": type(e).__name__,
                              "exit_code": e.exit_code, **({"hint": hint} if hint else {}), **where}))
        err.print(f"[bold red]error[/]: {escape(prefix + str(e))}", highlight=False, markup=True)
        if hint:
            err.print(hint, highlight=False, markup=False)
        raise typer.Exit(e.exit_code) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    report = {"status": "ok", **report}
    dist = _ranks()
    main = dist is None or dist.is_main()
    if dist is not None:
        dist.shutdown()
    if not main:
        return
    if as_json:
        print(json.dumps(report, default=str))
    else:
        show(report)
    if report.get("status") == "gate_failed":        # a full report whose gate missed: errors.GateFailed
        if not as_json:
            err.print(f"[bold red]gate failed[/]: {escape(str(report.get('error', '')))}", highlight=False)
        raise typer.Exit(report.get("exit_code", 9))
