"""`frontier`: accuracy against bytes over methods x budgets x labels, each point distilled to
its byte budget and evaluated with the fair protocol, in one resumable report folder.

    REPORT/frontier.json     settings, input and test fingerprints, every point (the state file)
    REPORT/frontier.csv      one row per point
    REPORT/frontier.png      accuracy vs total bytes (io/frontier_report.py draws it)
    REPORT/frontier.md       the table, the best choice per budget, where random is as good
    REPORT/points/<name>/    each point's compressed set (a dcompress output)
    REPORT/random/<key>.json the random sides of the fair protocol, trained once, shared

What is shared (docs/frontier.md): the input is read once (its decoded store) and the test
shards once; the teacher (labels `teacher`, DQ features) and the full-data network come from
the cache, one per input; the random side of a (budget-derived IPC, labels) point is trained
once and shared by every method with the same evaluation recipe (train/random_sides.py).
frontier.json is rewritten (atomically) after every point: a rerun of the same command keeps
the finished points, resumes a point's distillation from its checkpoint, and retries failed
points. Exit codes: 0; 9 when a gate misses; 1 (status "incomplete") when a point failed; 2 for
a REPORT of another input or settings (unless `overwrite`); 7 for a full disk.

Under torchrun (`--nproc N`) the ranks share the points, a (labels, budget) group at a time,
and rank 0 writes the report: api/frontier_ranks.py. The report is the one-process report.
"""
from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .. import __version__
from ..errors import DcompressError, Interrupted, OutputError, ResourceError, UsageError
from ..faults import crash_point
from ..limits import MAX_PIXELS
from .frontier_summary import finish
from .inputs import InputSpec, ProgressFn

DEFAULT_METHODS = ("random", "herding")
DEFAULT_BUDGETS = ("0.05%", "0.5%", "5%")
REPORT = "frontier.json"
FORMAT = "dcompress-frontier-v1"
FATAL = (ResourceError, Interrupted, KeyboardInterrupt, MemoryError)   # stop the frontier, keep the points


def frontier(urls, *, test, out: str | Path, methods: str | Sequence[str] = DEFAULT_METHODS,
             budgets: str | Sequence[str] = DEFAULT_BUDGETS, labels: str | Sequence[str] = ("hard",),
             epochs: int | None = None, model: str | None = None, runs: int = 2,
             lr_grid: str | Sequence[float] | None = None, lr_search: str | None = None,
             val_per_class: int | None = None, test_limit: int | None = None, full_epochs: int | None = None,
             full_max_samples: int | None = None, seed: int = 0, device: str = "auto", sets: Iterable[str] = (),
             teacher: str | Path | None = None, overwrite: bool = False, min_accuracy: float | None = None,
             min_gain_over_random: float | None = None, exact_images: bool | None = None, max_bad: int | None = None,
             max_pixels: int | None = MAX_PIXELS, allow_manifest_urls: bool = False, workers: int | None = None,
             progress: ProgressFn | None = None, log: Callable[[dict], None] | None = None) -> dict:
    """Distils `urls` with every method x budget x labels into `out/points/` and evaluates each
    point with the fair protocol against random subsets of the same size and labels; writes
    frontier.json/.csv/.png/.md into `out` and returns the frontier.json report (+ `counters`
    of the work done). `budgets`: bytes (`5MB`) or shares (`0.5%`) as `distill --budget`.
    `sets`: `method:key=value` config overrides (`teacher:key=value` for a teacher trained here).
    Gates (`min_accuracy` %, `min_gain_over_random` points) apply to every point. `model`: the
    evaluation network of every point (default: each method's protocol model). With `epochs`,
    `views`/`online` points store `epochs + 1` views per image, one per evaluation pass.
    `exact_images`: `distill --exact-images/--no-exact-images` for the methods that optimise
    pixels (None: their default). A rerun with more or fewer methods, budgets or labels and
    otherwise the same settings keeps the finished points it still asks for.
    `lr_search`: grid (default) or halving, the fair protocol's lr search (docs/evaluation.md).
    Under torchrun the ranks share the points and rank 0 returns the report (the other ranks:
    `rank`, the names of the points they ran, their own `counters`).
    """
    from .. import dist
    from ..io.atomic import OutputLock
    from .budget import parse_budget
    from .checks import check_limits, check_seed, resolve_device
    from .evaluate import check_gates, fair_configs

    methods, budgets, labels = _names(methods, "--methods"), _names(budgets, "--budgets"), _names(labels, "--labels")
    check_limits(runs=(runs, 1), test_limit=(test_limit, 1), epochs=(epochs, 1), max_bad=(max_bad, 0))
    check_seed(seed)
    check_gates(min_accuracy, min_gain_over_random, True)
    for b in budgets:
        parse_budget(b)
    method_sets, teacher_sets = _split_sets(sets, methods)
    fair_cfg, full_cfg = fair_configs("fair", lr_grid, val_per_class, False, full_epochs, full_max_samples, teacher,
                                      lr_search=lr_search)
    with dist.alone():                           # as each point is run: by one rank
        _check_requests(methods, budgets, labels, method_sets, teacher_sets, teacher, seed)
    dev = resolve_device(device)                 # torchrun: this rank's own GPU
    out = Path(out).absolute()
    inputs = InputSpec.of(urls, max_bad=max_bad, max_pixels=max_pixels, allow_manifest_urls=allow_manifest_urls,
                          workers=workers)
    inputs.check_output(out)
    log = log or (lambda ev: None)
    note = lambda text: log({"event": "note", "text": text})   # noqa: E731
    if model is not None:
        from ..train.evaluate import check_models

        check_models([model])
    settings = {"methods": methods, "budgets": budgets, "labels": labels, "epochs": epochs, "model": model,
                "runs": runs, "lr_grid": list(fair_cfg.lr_grid), "lr_search": fair_cfg.lr_search,
                "val_per_class": fair_cfg.val_per_class, "test_limit": test_limit,
                "full_data": {"epochs": full_cfg.epochs, "max_samples": full_cfg.max_samples}, "seed": seed,
                "sets": sorted(sets), "teacher": str(Path(teacher).absolute()) if teacher else None,
                "device": dev.type, **({"exact_images": exact_images} if exact_images is not None else {})}
    # torchrun: rank 0 holds the lock and owns frontier.json; every rank reads the input (its decoded store)
    with (OutputLock(out, what="frontier report") if dist.is_main() else contextlib.nullcontext()):
        real = inputs.read(progress=progress, note=note)
        test_real = _read_test(test, inputs, real, note)
        ident = {"format": FORMAT, "settings": settings, "input": _fingerprint(real), "test": _fingerprint(test_real)}
        state, run = dist.broadcast_object((_own_report(out, ident, overwrite), uuid.uuid4().hex)
                                           if dist.is_main() else None)
        return _run_points(out, ident, state, run=run, real=real, test_real=test_real, dev=dev,
                           method_sets=method_sets, teacher_sets=teacher_sets, teacher=teacher, fair_cfg=fair_cfg,
                           full_cfg=full_cfg, gates=(min_accuracy, min_gain_over_random), progress=progress, log=log,
                           note=note)


def point_name(method: str, budget: str, labels: str) -> str:
    """The point's folder under REPORT/points: `dm-0.5pct-teacher`, `herding-5MB-hard`."""
    safe = "".join(c if c.isalnum() or c in "._" else "-" for c in budget.replace("%", "pct"))
    return f"{method}-{safe}-{labels}"


def _names(value, flag: str) -> list[str]:
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    if not items:
        raise UsageError(f"{flag} needs at least one value")
    if len(set(items)) != len(items):
        raise UsageError(f"{flag} lists a value twice: {','.join(items)}")
    return [str(v) for v in items]


def _split_sets(sets: Iterable[str], methods: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """`method:key=value` -> per-method `--set` lists; `teacher:key=value` -> the teacher's."""
    per: dict[str, list[str]] = {m: [] for m in methods}
    teacher: list[str] = []
    for s in sets:
        who, sep, kv = str(s).partition(":")
        if not sep or "=" not in kv:
            raise UsageError(f"--set takes method:key=value (e.g. dm:iterations=100), got {s!r}")
        if who == "teacher":
            teacher.append(kv)
        elif who in per:
            per[who].append(kv)
        else:
            raise UsageError(f"--set {s!r}: {who!r} is not one of --methods ({','.join(methods)}) or 'teacher'")
    return per, teacher


def _check_requests(methods, budgets, labels, method_sets, teacher_sets, teacher, seed) -> None:
    """Every point's distill request built once before any reading: unknown methods, labels
    and config keys fail here (exit 2), not after an hour of earlier points."""
    from .request import DistillRequest

    for m in methods:
        for lab in labels:
            DistillRequest.make(m, sets=method_sets[m], teacher_sets=teacher_sets, teacher=teacher, seed=seed,
                                labels=lab, budget=budgets[0])


def _fingerprint(real) -> dict:
    return {"fingerprint": real.source.get("fingerprint"), "samples": len(real), "classes": real.num_classes,
            "urls": list(real.source.get("urls") or [])}


def _read_test(test, inputs: InputSpec, real, note):
    """The test shards decoded as the input was, their labels mapped with the input's classes."""
    import dataclasses

    urls = InputSpec.of(test).urls
    return dataclasses.replace(inputs, urls=urls).with_classes(real.class_names).read(note=note)


def _own_report(out: Path, ident: dict, overwrite: bool) -> dict:
    """The points a previous run of the same frontier finished (empty for a new report);
    UsageError for a report of another input or settings unless `overwrite` (then it starts
    over); OutputError for a non-empty folder that is no frontier report."""
    import json

    from ..io.safe_write import ensure_dir, write_json
    from . import frontier_ranks as ranks

    if out.exists() and not out.is_dir():
        raise OutputError("the report path exists and is not a folder", path=str(out))
    state = None
    if out.is_dir() and any(out.iterdir()):
        try:
            state = json.loads((out / REPORT).read_text())
        except (OSError, ValueError):
            raise OutputError(f"folder is not empty and holds no readable {REPORT}: not a frontier report; "
                              "choose another -o or empty it", path=str(out)) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise OutputError(f"{REPORT} is not a dcompress frontier report", path=str(out))
        if isinstance(state.get("settings"), dict):     # a report from before --lr-search searched the grid
            state["settings"].setdefault("lr_search", "grid")
        same = _without_grid(state) == _without_grid(ident)
        if not same and not overwrite:
            what = [k for k in ("input", "test", "settings")
                    if _without_grid(state).get(k) != _without_grid(ident)[k]]
            diff = "; ".join(_differences(_without_grid(state).get(k) or {}, _without_grid(ident)[k], k) for k in what)
            raise UsageError(f"the report folder holds a frontier of another {' and '.join(what)} ({diff}); pass "
                             "--overwrite to replace it, or choose another -o", path=str(out))
        if not same:
            for name in ("points", "random", ranks.RANKS, REPORT, "frontier.csv", "frontier.png", "frontier.md"):
                p = out / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            state = None
        else:               # the points a killed run of several ranks kept in their rank files
            state["points"] = ranks.fold(out, ident, state.get("points") or [])
            for p in state["points"]:        # reports from before points recorded their method's --set
                p.setdefault("sets", sets_of(state.get("settings") or {}, p.get("method")))
    state = {**(state or {}), **ident, "dcompress": __version__, "status": "running",
             "points": (state or {}).get("points", [])}
    _write(lambda path, obj: write_json(ensure_dir(path.parent) / path.name, obj), out / REPORT, state)
    ranks.clear(out)
    return state


GRID = ("methods", "budgets", "labels")      # the axes of the grid: a rerun may change them and keep the points


def _without_grid(ident: dict) -> dict:
    """The report's identity without the grid's axes and the methods' own `--set`s (each point
    records its method's, and only the points whose `--set`s changed are run again): what must
    match for any point to be kept. The teacher's `--set`s stay in it."""
    out = {k: v for k, v in ident.items() if k in ("format", "settings", "input", "test")}
    settings = out.get("settings") or {}
    out["settings"] = {k: v for k, v in settings.items() if k not in GRID + ("sets",)}
    out["settings"]["teacher_sets"] = sets_of(settings, "teacher")
    return out


def sets_of(settings: dict, method: str | None) -> list[str]:
    """`method`'s `key=value` overrides among the settings' `--set method:key=value`, sorted."""
    return sorted(kv for who, _, kv in (str(s).partition(":") for s in settings.get("sets") or []) if who == method)


def _differences(old: dict, new: dict, what: str) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{what}.{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in keys[:3])


def _run_points(out: Path, ident: dict, state: dict, *, run: str, real, test_real, dev, method_sets, teacher_sets,
                teacher, fair_cfg, full_cfg, gates, progress, log, note) -> dict:
    """Every point of this rank in turn (labels, then budget, then method: the first method at
    a budget trains the random side the others reuse; under torchrun this rank's groups of
    them, frontier_ranks.my_points), each by this process alone; frontier.json rewritten after
    each (rank 0; the other ranks write their rank file). Rank 0 writes the report."""
    from .. import dist
    from ..io.safe_write import write_json
    from ..train.random_sides import RandomSides
    from . import frontier_ranks as ranks

    s = ident["settings"]
    grid = ranks.grid_of(s)
    names = [point_name(*g) for g in grid]
    kept = {p["name"]: p for p in state.get("points", []) if p.get("status") == "ok"
            and p.get("sets", []) == sets_of(s, p.get("method"))}
    changed = {p["name"] for p in state.get("points", []) if p.get("status") == "ok"} - set(kept)
    store = RandomSides(out / "random", note)
    ledger = ranks.Ledger(out, ident, state, names=names, kept=kept, run=run, store=store, note=note,
                          write=lambda obj: _write(write_json, out / REPORT, obj))
    pending = {i for i, n in enumerate(names) if n not in kept}
    heads = [f"point {i + 1}/{len(grid)}: {m} @ {b} ({lab})" for i, (m, b, lab) in enumerate(grid)]
    spread = dist.world() > 1
    for i in sorted(set(range(len(grid))) - pending) if spread else []:   # one process: in turn, below
        note(f"{heads[i]}: finished before, kept: {line(kept[names[i]])}")
    for i in ranks.my_points(grid, pending, real, run):
        (m, b, lab), name, head = grid[i], names[i], heads[i]
        if name in kept:
            if not spread:
                note(f"{head}: finished before, kept: {line(kept[name])}")
            continue
        note(f"{head}: distil and evaluate")
        try:
            with dist.alone():             # this rank by itself: no collective inside a point
                p = _point(out, name, m, b, lab, s, real=real, test_real=test_real, dev=dev, sets=method_sets[m],
                           teacher_sets=teacher_sets, teacher=teacher, fair_cfg=fair_cfg, full_cfg=full_cfg,
                           store=store, progress=progress, log=log, replace=name in changed)
        except FATAL:
            raise
        except Exception as e:  # noqa: BLE001 - a failed point is recorded and the frontier goes on
            e = _as_error(e)
            p = {"name": name, "method": m, "labels": lab, "budget": b, "status": "error", "error": str(e),
                 "error_type": type(e).__name__, "exit_code": e.exit_code}
        note(f"{head}: {line(p)}")
        ledger.record(p)
        crash_point("frontier.point")
    points, counters = ledger.finish()
    if not dist.is_main():
        return {"out": str(out), "rank": dist.rank(), "world_size": dist.world(),
                "points": [p["name"] for p in points], "counters": counters}
    report = finish(ident, points, gates)
    _write_files(out, report)
    ranks.clear(out)
    return {**report, "out": str(out), "counters": counters}


def _point(out: Path, name: str, method: str, budget: str, labels: str, s: dict, *, real, test_real, dev, sets,
           teacher_sets, teacher, fair_cfg, full_cfg, store, progress, log, replace: bool = False) -> dict:
    """One point: distilled to its budget (up to date on a rerun; `replace`: its set of other
    `--set`s is replaced), then the fair evaluation."""
    from ..io.loader import load
    from ..train.fair import fair_evaluate
    from ..registry import get_method
    from .distill import distill

    t0 = time.time()
    views = s["epochs"] + 1 if (s["epochs"] and labels in ("views", "online")) else None   # one per pass
    rep = distill(None, method, out=out / "points" / name, budget=budget, labels=labels, seed=s["seed"],
                  device=str(dev), sets=sets, teacher_sets=teacher_sets, teacher=teacher, real=real,
                  label_views=views, progress=progress, log=log, overwrite=replace,
                  exact_images=s.get("exact_images") if get_method(method).info.exact_form else None)
    t1 = time.time()
    ev = fair_evaluate(load(out / "points" / name), test_real, train=real, runs=s["runs"], epochs=s["epochs"],
                       model=s.get("model"),
                       seed=s["seed"], device=dev, test_limit=s["test_limit"], config=fair_cfg, full_data=full_cfg,
                       teacher=teacher, progress=progress, log=log, random_sides=store)
    bud, f, sec = rep.get("budget") or {}, ev["fair"], ev["seconds"]
    sides = f["random_sides"]
    full_s = float(f["full_data"].get("seconds") or 0.0)
    return {"name": name, "method": method, "labels": labels, "budget": budget, "status": "ok", "sets": sorted(sets),
            "out": f"points/{name}", "budget_bytes": bud.get("bytes"), "bytes": bud.get("achieved"),
            "fits": bud.get("fits"), "ipc": rep["ipc"], "samples": rep["samples"], "accuracy": ev["compressed"],
            "random": {k: ev["random"][k] for k in ("mean", "std", "runs", "lr")}, "gain": ev["delta"],
            "ior": ev["scores"]["ior"], "hlr": ev["scores"]["hlr"], "lr": ev["protocol"]["lr_used"],
            "outside_reader": ev["outside_reader"], "random_images": ev["random_images"],
            "eval_recipe": {k: ev["protocol"][k] for k in ("model", "epochs", "aug", "soft_labels")},
            "random_side": next(x["key"] for x in sides if x["labels"] == f["labels"]),
            "random_sides": [x["key"] for x in sides],
            "seconds": {"distill": round(t1 - t0, 1), "compressed": sec["compressed"], "random": sec["random"],
                        "full_data": sec["full_data"], "outside_reader": sec.get("outside_reader", 0.0),
                        "total": round(time.time() - t0, 1),
                        # what `evaluate --protocol fair` alone would have trained for this set
                        "standalone_evaluation": round(sec["compressed"] + sec.get("outside_reader", 0.0)
                                                       + sum(x["seconds"] for x in sides) + full_s, 1)}}


def _as_error(e: BaseException) -> DcompressError:
    """A point's exception as the DcompressError it reports; a full disk stops the frontier."""
    from ..errors import os_error

    if isinstance(e, OSError):
        e = os_error(e, action="write the point", writing=False)
    if isinstance(e, ResourceError):
        raise e
    if isinstance(e, DcompressError):
        return e
    return DcompressError(f"internal error ({type(e).__name__}: {e})")


def line(p: dict) -> str:
    """A point's result in one line (progress notes)."""
    if p.get("status") != "ok":
        return f"failed: {p.get('error')}"
    a, r, o = p["accuracy"], p["random"], p.get("outside_reader") or {}
    reader = f"; outside reader (.{o['images']}) {o['mean']:.2f} ± {o['std']:.2f} %" if "mean" in o else ""
    return (f"IPC {p['ipc']}, {p['bytes']:,} bytes, {a['mean']:.2f} ± {a['std']:.2f} % vs random "
            f"{r['mean']:.2f} ± {r['std']:.2f} % ({p['gain']:+.2f}){reader}")


def _write(fn, path: Path, *args) -> None:
    from ..errors import os_error

    try:
        fn(path, *args)
    except OSError as e:
        raise os_error(e, path, "write the frontier report") from None


def _write_files(out: Path, report: dict) -> None:
    """frontier.csv, .png, .md, then frontier.json (last: a complete json means complete files)."""
    from ..io import frontier_report as fr
    from ..io.safe_write import write_bytes, write_json, write_text

    _write(write_text, out / "frontier.csv", fr.csv_text(report))
    _write(write_bytes, out / "frontier.png", fr.plot_png(report))
    _write(write_text, out / "frontier.md", fr.markdown(report))
    _write(write_json, out / REPORT, report)
