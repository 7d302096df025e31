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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
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


def _usage_name(param) -> str:
    """A positional argument as usage lines write it: `URLS...`, `OUT`, `[ENTRY...]`."""
    name = param.metavar or param.name.upper()
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name if param.required else f"[{name}]"


def _conventional(cmd) -> None:
    """Help in the click/`hf` convention (typer's own shows `{src} {OUT}` and `<bool>` on every
    flag): arguments by their metavar, no type column for arguments and flags (`--help` too)."""
    import types

    def plain(param) -> None:
        if param.param_type_name == "argument":
            param._usage_display_name = types.MethodType(lambda self: _usage_name(self), param)
            param.display_type_rich = types.MethodType(lambda self, ctx: None, param)
        elif getattr(param, "is_flag", False):
            param.display_type_rich = types.MethodType(lambda self, ctx: None, param)

    for param in getattr(cmd, "params", []):
        plain(param)
    if not getattr(cmd, "_dcompress_help", False) and hasattr(cmd, "get_help_option"):
        original = cmd.get_help_option

        def get_help_option(ctx):
            option = original(ctx)
            if option is not None:
                plain(option)
            return option
        cmd.get_help_option = get_help_option
        cmd._dcompress_help = True
    for sub in getattr(cmd, "commands", {}).values():
        _conventional(sub)


class App(TyperGroup):
    """Runs every command non-standalone so that Click's own usage errors (missing option,
    unknown flag, bad integer) also honour `--json` and print one `error:` line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        _conventional(self)
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
            err.print(f"error: {e.format_message()}", highlight=False, markup=False, soft_wrap=True)
            sys.exit(code)
        except _ABORT:
            err.print("error: aborted", highlight=False, soft_wrap=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def clock(seconds: float) -> str:
    """tqdm's clock: 00:31, 08:05, 1:02:03."""
    s = int(max(0, seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m:02d}:{s % 60:02d}"


def duration(seconds: float) -> str:
    """A time a person plans with: 42 s, 13 min, 2.5 h, 1.2 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def rate(steps: float, seconds: float) -> str:
    """2.6 it/s, or 3.9 s/it when slower than one step a second (tqdm's convention)."""
    if steps <= 0 or seconds <= 0:
        return "? it/s"
    per = steps / seconds
    if per < 1:
        return f"{1 / per:.3g} s/it"
    return f"{per:.3g} it/s" if per < 100 else f"{per:,.0f} it/s"


def _unit(desc: str) -> str:
    """What one step of a bar is, for the first-step estimate."""
    return "epoch" if any(w in desc for w in ("run ", "teacher", "expert", "epochs", "networks")) else "iteration"


# The first-step estimate is printed when the rest of a bar would take at least this long.
ESTIMATE_MIN_S = float(os.environ.get("DCOMPRESS_ESTIMATE_MIN_S", "20"))


class Reporter:
    """Progress on stderr: rich bars on a terminal; plain timestamped lines elsewhere (CI logs),
    one per bar at its start, at most every `interval` seconds, and at its end. Both show the
    tqdm/`hf` convention `12/200 [00:31<08:05, 2.6 it/s]` (elapsed<remaining, rate, measured
    since the bar's first report) and the latest loss. When a bar's first step is measured on
    its own (a call at `done0`, then at `done0 + 1`) and the rest would take long, one line
    says so: `dm: iteration 1 took 3.9 s: ~13 min for 200`. Also the method's `log` sink: the
    latest loss shows on the bar, notes (resume) print as lines."""

    def __init__(self, interval: float = float(os.environ.get("DCOMPRESS_PROGRESS_INTERVAL", "10"))):
        self.tty = err.is_terminal
        self.interval = interval
        self.loss: float | None = None
        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[timing]}"), TextColumn("{task.fields[loss]}"),
                          console=err, transient=False, disable=not self.tty)
        self.tasks: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.first: dict[str, tuple[float, int]] = {}   # desc -> (time, done) of its first report
        self.estimated: set[str] = set()
        self.t0 = time.time()
        self.quiet = False                      # torchrun: only rank 0 reports (set by run)

    def timing(self, desc: str, done: int, total: int, now: float) -> str:
        """`[elapsed<remaining, rate]` of a bar (remaining only with a total and a measured rate)."""
        t_first, done0 = self.first[desc]
        spent, steps = now - t_first, done - done0
        eta = f"<{clock((total - done) * spent / steps)}" if total and steps > 0 else ""
        return f"[{clock(spent)}{eta}, {rate(steps, spent)}]" if steps > 0 else f"[{clock(spent)}]"

    def _estimate(self, desc: str, done: int, total: int, now: float) -> None:
        t_first, done0 = self.first[desc]
        if desc in self.estimated or done != done0 + 1 or not total:
            return
        self.estimated.add(desc)
        step = now - t_first
        if step * (total - done) >= ESTIMATE_MIN_S:
            self.note(f"{desc}: {_unit(desc)} {done} took {step:.1f} s: ~{duration(step * (total - done0))} "
                      f"for {total - done0}")

    def __call__(self, done: int, total: int, desc: str) -> None:
        if self.quiet:
            return
        now = time.time()
        if desc not in self.first:
            self.first[desc] = (now, done)
        else:
            self._estimate(desc, done, total, now)
        loss = f"loss {self.loss:.4g}" if self.loss is not None else ""
        timing = self.timing(desc, done, total, now)
        if self.tty:
            if desc not in self.tasks:
                self.tasks[desc] = self.p.add_task(desc, total=total or None, loss=loss, timing=timing)
            self.p.update(self.tasks[desc], completed=done, total=total or None, loss=loss, timing=timing)
            return
        first = desc not in self.last
        if first or now - self.last[desc] >= self.interval or (total and done >= total):
            self.last[desc] = now
            of = f"/{total}" if total else ""
            err.print(f"[{time.strftime('%H:%M:%S')}] {desc}: {done}{of} {timing}{', ' + loss if loss else ''}",
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


# ------------------------------------------------------------------------------------------------
# Reports for people: the JSON report's fields as `key: value` lines, numbers rounded, seconds and
# bytes with units, nested records on one line or indented, never a Python repr.

def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def value_text(key: str, v, *, limit: int = 12) -> str:
    """One value as a person reads it: 34.01 not 34.01121520996094, 12.3 s, 1.2 MiB, yes/no,
    `a 1, b 2` for a small record, `x, y, z … (+40 more)` for a long list."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if key.endswith("bytes") or key in ("bytes", "filesize"):
            return human_bytes(v)
        text = f"{v:,}" if isinstance(v, int) and abs(v) >= 100000 else f"{v:.4g}" if isinstance(v, float) else str(v)
        return f"{text} s" if key.endswith("_s") or key == "seconds" else text
    if isinstance(v, dict):
        items = list(v.items())
        unit = key if key.endswith("bytes") else None          # estimated_bytes: {images, labels}
        cells = [f"{k.removesuffix('_s')} {value_text(unit or k, x, limit=4)}" for k, x in items[:limit]]
        return ", ".join(cells) + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")
    if isinstance(v, (list, tuple)):
        if not v:
            return "–"
        cells = [value_text(key, x, limit=4) for x in v[:limit]]
        return ", ".join(cells) + (f" … (+{len(v) - limit} more)" if len(v) > limit else "")
    return str(v)


def report_lines(report: dict) -> list[str]:
    """`key: value` per field; a record of records (or a long one) is indented below its key."""
    lines = []
    for k, v in report.items():
        if isinstance(v, dict) and v and (len(v) > 6 or any(isinstance(x, (dict, list)) for x in v.values())):
            lines.append(f"{k}:")
            lines += [f"  {sub}" for sub in report_lines(v)]
        else:
            lines.append(f"{k}: {value_text(k, v)}")
    return lines


def show_report(report: dict) -> None:
    """The human form of a report on stdout (the `--json` form is the report itself)."""
    for line in report_lines(report):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


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
        err.print(f"[bold red]error[/]: {escape(prefix + str(e))}", highlight=False, markup=True, soft_wrap=True)
        if hint:
            err.print(hint, highlight=False, markup=False, soft_wrap=True)
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
    if report.get("status") in ("gate_failed", "incomplete"):   # a full report that says what missed
        if not as_json:
            what = "gate failed" if report["status"] == "gate_failed" else "incomplete"
            why = str(report.get("error", "")).removeprefix(f"{what}: ")
            err.print(f"[bold red]{what}[/]: {escape(why)}", highlight=False)
        raise typer.Exit(report.get("exit_code", 9 if report["status"] == "gate_failed" else 1))
