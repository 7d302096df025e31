"""The `dcompress` command line: parse, call the API, print. No algorithm code here.

Progress goes to stderr (rich); `--json` prints exactly one JSON report on stdout, also on
failure ({"status": "error", ...}). Exit codes come from `dcompress.errors` (one place: `_run`).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import DcompressError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress image-classification WebDataset shards into small training sets.")
err = Console(stderr=True)
out = Console()


class _Progress:
    """rich progress on stderr; one bar per description."""

    def __init__(self, enabled: bool):
        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err, transient=False, disable=not enabled)
        self.tasks: dict[str, int] = {}

    def __call__(self, done: int, total: int, desc: str) -> None:
        if desc not in self.tasks:
            self.tasks[desc] = self.p.add_task(desc, total=total or None)
        self.p.update(self.tasks[desc], completed=done, total=total or None)

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *a):
        self.p.__exit__(*a)


def _run(as_json: bool, fn: Callable[[_Progress], dict], show: Callable[[dict], None]) -> None:
    """Runs `fn`, prints its report, maps exceptions to exit codes."""
    try:
        with _Progress(enabled=err.is_terminal or not as_json) as prog:
            report = fn(prog)
    except DcompressError as e:
        if as_json:
            print(json.dumps({"status": "error", "error": str(e), "error_type": type(e).__name__,
                              "exit_code": e.exit_code}))
        err.print(f"[bold red]error[/]: {e}", highlight=False, markup=True)
        raise typer.Exit(e.exit_code) from None
    if as_json:
        print(json.dumps(report, default=str))
    else:
        show(report)


def _kv(report: dict) -> None:
    for k, v in report.items():
        out.print(f"[bold]{k}[/]: {v}", highlight=False)


JSON = typer.Option(False, "--json", help="Print one JSON report on stdout.")


@app.command()
def shard(src: Path = typer.Argument(..., help="idx folder (MNIST/Fashion-MNIST) or ImageFolder tree"),
          dest: Path = typer.Argument(..., metavar="OUT", help="output folder for shards + manifest.json"),
          fmt: str = typer.Option("auto", "--format", help="idx | folder | auto"),
          split: str = typer.Option("train", "--split", help="train | test (idx format)"),
          shard_size: int = typer.Option(10000, "--shard-size", help="samples per shard"),
          as_json: bool = JSON) -> None:
    """Write WebDataset shards (+ manifest.json) from idx files or an ImageFolder tree."""
    from .io.sources import make_shards

    _run(as_json, lambda p: make_shards(src, dest, fmt=fmt, split=split, shard_size=shard_size,
                                        progress=lambda a, b: p(a, b, "sharding")), _kv)


@app.command()
def distill(urls: List[str] = typer.Argument(..., help="brace pattern(s), shard list, pipe: URL, or a folder/manifest from `dcompress shard`"),
            method: str = typer.Option(..., "--method", "-m", help="see `dcompress methods`"),
            output: Path = typer.Option(..., "-o", "--out", help="output folder (written atomically)"),
            ipc: Optional[int] = typer.Option(None, "--ipc", help="images per class"),
            ratio: Optional[float] = typer.Option(None, "--ratio", help="fraction of the input to keep, in (0, 1]"),
            seed: int = typer.Option(0, "--seed"),
            device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
            config: Optional[Path] = typer.Option(None, "--config", help="YAML file of method config keys"),
            sets: List[str] = typer.Option([], "--set", help="key=value config override (repeatable)"),
            resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from the last checkpoint"),
            labels: str = typer.Option("auto", "--labels", help="auto | hard | teacher | learned"),
            teacher: Optional[Path] = typer.Option(None, "--teacher", help="teacher state dict (.pt + .json sidecar)"),
            max_bad: int = typer.Option(100, "--max-bad", help="fail (exit 3) past this many corrupt samples"),
            shard_size: int = typer.Option(1000, "--shard-size", help="samples per output shard"),
            ckpt_every: int = typer.Option(50, "--ckpt-every", help="checkpoint period (iterations)"),
            experts: Optional[Path] = typer.Option(None, "--experts", help="expert buffer (mtt, datm)"),
            bins: Optional[int] = typer.Option(None, "--bins", help="number of DQ bins"),
            features: Optional[str] = typer.Option(None, "--features", help="dq: teacher | grad | FILE.npy"),
            keep_bins: bool = typer.Option(False, "--keep-bins", help="dq: also write all bins' index lists"),
            from_bins: Optional[Path] = typer.Option(None, "--from-bins", help="dq: re-sample bins saved by --keep-bins"),
            dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, write nothing"),
            as_json: bool = JSON) -> None:
    """Compress a dataset with a method (selection or synthesis)."""
    from .api import distill as api_distill

    options = {k: v for k, v in {"experts": experts, "bins": bins, "features": features,
                                 "keep_bins": keep_bins or None, "from_bins": from_bins}.items() if v is not None}

    def work(prog: _Progress) -> dict:
        return api_distill(urls, method, out=output, ipc=ipc, ratio=ratio, seed=seed, device=device, config=config,
                           sets=sets, resume=resume, labels=labels, teacher=teacher, max_bad=max_bad,
                           shard_size=shard_size, ckpt_every=ckpt_every, dry_run=dry_run, options=options,
                           progress=prog)
    _run(as_json, work, _show_distill)


def _show_distill(report: dict) -> None:
    if report.get("status") == "dry-run":
        table = Table(title="plan (nothing written)")
        table.add_column("item")
        table.add_column("value")
        for k, v in report["plan"].items():
            table.add_row(k, str(v))
        out.print(table)
        return
    _kv(report)


@app.command()
def experts(urls: List[str] = typer.Argument(..., help="training shards (URLS as for distill)"),
            output: Path = typer.Option(..., "-o", "--out", help="buffer folder (resumable; several processes may fill it)"),
            num_experts: int = typer.Option(..., "--num-experts", help="complete experts wanted in the buffer"),
            epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs per expert (default 50); E+1 snapshots"),
            optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd (MTT, default) | ftd (DATM's GSAM)"),
            test: Optional[List[str]] = typer.Option(None, "--test", help="test shards for per-epoch accuracy"),
            holdout: Optional[float] = typer.Option(None, "--holdout", help="input fraction held out for accuracy (default 0.05, 0 with --test)"),
            seed: int = typer.Option(0, "--seed"),
            device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
            config: Optional[Path] = typer.Option(None, "--config", help="YAML file of expert config keys"),
            sets: List[str] = typer.Option([], "--set", help="key=value expert config override, e.g. model=convnet_w16"),
            stale_after: float = typer.Option(3600.0, "--stale-lock-seconds", help="break locks without heartbeat for this long"),
            max_bad: int = typer.Option(100, "--max-bad"),
            as_json: bool = JSON) -> None:
    """Train expert trajectories (MTT/DATM) into a memory-mappable buffer."""
    from .api import load_real, resolve_device
    from .config import resolve_config
    from .train.experts import ExpertConfig, train_experts

    base = {k: v for k, v in {"epochs": epochs, "optimizer": optimizer, "holdout": holdout}.items() if v is not None}

    def work(prog: _Progress) -> dict:
        cfg = resolve_config(ExpertConfig, file=config, sets=sets, base={**base, "seed": seed})
        dev = resolve_device(device)
        real = load_real(urls, max_bad=max_bad, progress=prog)
        test_data = load_real(test, max_bad=max_bad) if test else None
        return train_experts(real, output, num_experts=num_experts, config=cfg, test=test_data, device=dev,
                             stale_after=stale_after, progress=prog)
    _run(as_json, work, _kv)


@app.command()
def methods(as_json: bool = JSON) -> None:
    """List registered methods with their options."""
    from .registry import list_methods

    rows = []
    for cls in list_methods():
        opts = {f.name: f.default for f in dataclasses.fields(cls.Config)}
        rows.append({"name": cls.info.name, "kind": cls.info.kind, "description": cls.info.description,
                     "needs_experts": cls.info.needs_experts, "options": opts})
    if as_json:
        print(json.dumps(rows, default=str))
        return
    table = Table()
    for col in ("method", "kind", "description", "options (--set key=value)"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["description"], ", ".join(f"{k}={v}" for k, v in r["options"].items()))
    out.print(table)


@app.command()
def evaluate(target: Path = typer.Argument(..., metavar="OUT", help="a dcompress output folder"),
             test: List[str] = typer.Option(..., "--test", help="test shards (URLS as for distill)"),
             train: Optional[List[str]] = typer.Option(None, "--train", help="training shards for the random baseline (default: the manifest's source)"),
             runs: int = typer.Option(3, "--runs", help="fresh networks per set"),
             model: Optional[str] = typer.Option(None, "--model", help="override the protocol's network"),
             epochs: Optional[int] = typer.Option(None, "--epochs", help="override the protocol's epochs"),
             seed: int = typer.Option(0, "--seed"),
             device: str = typer.Option("auto", "--device"),
             random_baseline: bool = typer.Option(True, "--random/--no-random", help="also train a random real subset of the same size"),
             test_limit: Optional[int] = typer.Option(None, "--test-limit", help="evaluate on a fixed random subset of the test set"),
             max_bad: int = typer.Option(100, "--max-bad"),
             as_json: bool = JSON) -> None:
    """Train fresh networks on a compressed set and report test accuracy (vs random)."""
    from .api import load_real, resolve_device
    from .io.manifest import read_manifest
    from .train.evaluate import evaluate as api_evaluate

    def work(prog: _Progress) -> dict:
        dev = resolve_device(device)
        test_data = load_real(test, max_bad=max_bad)
        train_data = None
        if random_baseline:
            urls = train or read_manifest(target)["dcompress"]["source"]["urls"]
            train_data = load_real(urls, max_bad=max_bad)
        return api_evaluate(target, test_data, train=train_data, runs=runs, model=model, epochs=epochs, seed=seed,
                            device=dev, random_baseline=random_baseline, test_limit=test_limit, progress=prog)
    _run(as_json, work, _show_eval)


def _show_eval(r: dict) -> None:
    table = Table(title=f"{r['method']}: {r['samples']} images, test on {r['test_samples']}")
    for col in ("set", "accuracy % (mean ± std)", "runs"):
        table.add_column(col)
    c = r["compressed"]
    table.add_row(r["method"], f"{c['mean']:.2f} ± {c['std']:.2f}", str(c["runs"]))
    if r.get("random"):
        rr = r["random"]
        table.add_row(f"random ({rr['labels']})", f"{rr['mean']:.2f} ± {rr['std']:.2f}", str(rr["runs"]))
    out.print(table)
    p = r["protocol"]
    out.print(f"protocol {p['name']}: {p['model']}, {p['epochs']} epochs, lr {p['lr_used']}, aug {p['aug']}, "
              f"soft labels {p['soft_labels']}", highlight=False)


@app.command()
def inspect(target: Path = typer.Argument(..., metavar="OUT"),
            grid: Optional[Path] = typer.Option(None, "--grid", help="PNG path (default OUT/../<name>-grid.png)"),
            as_json: bool = JSON) -> None:
    """Summarise a compressed set and write a grid PNG of every class's images."""
    from .inspect import grid_png, summary

    def work(prog: _Progress) -> dict:
        rep = summary(target)
        dest = grid or target.parent / f"{target.name}-grid.png"
        rep["grid"] = str(grid_png(target, dest))
        return rep
    _run(as_json, work, _kv)


@app.command()
def verify(target: Path = typer.Argument(..., metavar="OUT"), as_json: bool = JSON) -> None:
    """Re-check every shard against the manifest's sizes, md5 sums and counts (exit 6 on mismatch)."""
    from .io.manifest import verify as api_verify

    _run(as_json, lambda p: api_verify(target), _kv)


def main() -> None:
    from .alloc import tune_malloc; tune_malloc()  # noqa: E702 -- keep freed activations in the heap (docs/performance.md)
    app()


if __name__ == "__main__":
    sys.exit(main())
