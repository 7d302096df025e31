"""The `dcompress` command line: parse, call the API, print. No algorithm code here.

Progress, reports and the mapping of every exception to an exit code live in `console.py`:
`--json` prints exactly one JSON report on stdout, also on failure and for usage errors.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .console import App, Reporter, out, run
from .limits import MAX_PIXELS as MAX_PIXELS_DEFAULT


app = typer.Typer(cls=App, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress image-classification WebDataset shards into small training sets.")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"dcompress {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Compress image-classification WebDataset shards into small training sets."""


def _use_cache(cache_dir: Optional[Path]) -> None:
    """`--cache-dir` (or DCOMPRESS_CACHE): where teachers, features and default expert buffers live."""
    if cache_dir is not None:
        os.environ["DCOMPRESS_CACHE"] = str(Path(cache_dir).absolute())




def _kv(report: dict) -> None:
    for k, v in report.items():
        out.print(f"[bold]{k}[/]: {v}", highlight=False)


JSON = typer.Option(False, "--json", help="Print one JSON report on stdout.")
DEVICE = typer.Option("auto", "--device", envvar="DCOMPRESS_DEVICE", help="auto | cpu | cuda[:N]")
CACHE = typer.Option(None, "--cache-dir", envvar="DCOMPRESS_CACHE",
                     help="cache for teachers, features and default expert buffers [default: ~/.cache/dcompress]")
MAX_BAD = typer.Option(100, "--max-bad", help="fail (exit 3) past this many corrupt samples")
MAX_PIXELS = typer.Option(MAX_PIXELS_DEFAULT, "--max-pixels",
                          help="skip (as corrupt) images whose header declares more pixels than this")
ALLOW_URLS = typer.Option(False, "--allow-manifest-urls",
                          help="trust shard urls read from manifests (absolute, '..', pipe:, http:); off: "
                               "only files inside the manifest's folder")


@app.command()
def shard(src: Path = typer.Argument(..., help="idx folder (MNIST/Fashion-MNIST) or ImageFolder tree"),
          dest: Path = typer.Argument(..., metavar="OUT", help="output folder for shards + manifest.json"),
          fmt: str = typer.Option("auto", "--format", help="idx | folder | auto"),
          split: str = typer.Option("train", "--split", help="train | test (idx format)"),
          shard_size: int = typer.Option(10000, "--shard-size", help="samples per shard"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing shard folder at OUT"),
          as_json: bool = JSON) -> None:
    """Write WebDataset shards (+ manifest.json) from idx files or an ImageFolder tree."""
    from .io.sources import make_shards

    run(as_json, lambda p: make_shards(src, dest, fmt=fmt, split=split, shard_size=shard_size, overwrite=overwrite,
                                        progress=lambda a, b: p(a, b, "sharding")), _kv)


@app.command()
def distill(urls: List[str] = typer.Argument(..., metavar="URLS...", help="brace pattern(s), shard list, pipe: URL, or a folder/manifest from `dcompress shard`"),
            method: str = typer.Option(..., "--method", "-m", help="see `dcompress methods`"),
            output: Path = typer.Option(..., "-o", "--out", help="output folder (written atomically)"),
            ipc: Optional[int] = typer.Option(None, "--ipc", help="images per class"),
            ratio: Optional[float] = typer.Option(None, "--ratio", help="fraction of the input to keep, in (0, 1]"),
            seed: int = typer.Option(0, "--seed"),
            device: str = DEVICE,
            config: Optional[Path] = typer.Option(None, "--config", help="YAML file of method config keys"),
            sets: List[str] = typer.Option([], "--set", help="key=value config override (repeatable)"),
            resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from the last checkpoint"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output at -o"),
            labels: str = typer.Option("auto", "--labels", help="auto | hard | teacher | learned"),
            teacher: Optional[Path] = typer.Option(None, "--teacher", help="teacher state dict (.pt + .json sidecar)"),
            teacher_sets: List[str] = typer.Option([], "--teacher-set", help="key=value for a teacher trained here "
                                                   "(model, epochs, max_samples, lr, ...; repeatable)"),
            max_bad: int = MAX_BAD,
            max_pixels: int = MAX_PIXELS,
            allow_manifest_urls: bool = ALLOW_URLS,
            shard_size: int = typer.Option(1000, "--shard-size", help="samples per output shard"),
            ckpt_every: int = typer.Option(50, "--ckpt-every", help="checkpoint period (iterations)"),
            experts: Optional[Path] = typer.Option(None, "--experts", help="expert buffer (mtt, datm)"),
            bins: Optional[int] = typer.Option(None, "--bins", help="number of DQ bins"),
            features: Optional[str] = typer.Option(None, "--features", help="dq: teacher | grad | FILE.npy"),
            keep_bins: bool = typer.Option(False, "--keep-bins", help="dq: also write all bins' index lists"),
            from_bins: Optional[Path] = typer.Option(None, "--from-bins", help="dq: re-sample bins saved by --keep-bins"),
            dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, write nothing"),
            cache_dir: Optional[Path] = CACHE,
            label_topk: Optional[int] = typer.Option(None, "--label-topk", help="store only each sample's K "
                                                     "largest logits (+ class indices); at most the class count"),
            as_json: bool = JSON) -> None:
    """Compress a dataset with a method (selection or synthesis)."""
    from .api import distill as api_distill

    # method config flags: an explicit flag beats --set and --config (None = not given)
    flags = {"bins": bins, "features": features, "keep_bins": keep_bins or None,
             "from_bins": str(from_bins) if from_bins else None}

    def work(prog: Reporter) -> dict:
        _use_cache(cache_dir)
        return api_distill(urls, method, out=output, ipc=ipc, ratio=ratio, seed=seed, device=device, config=config,
                           sets=sets, resume=resume, overwrite=overwrite, labels=labels, teacher=teacher,
                           max_bad=max_bad, max_pixels=max_pixels, allow_manifest_urls=allow_manifest_urls,
                           shard_size=shard_size, ckpt_every=ckpt_every, dry_run=dry_run, flags=flags,
                           experts=experts, teacher_sets=teacher_sets, progress=prog, log=prog.event,
                           label_topk=label_topk)
    run(as_json, work, _show_distill)


def _show_distill(report: dict) -> None:
    if report.get("status") == "dry-run":
        table = Table(title="plan (nothing written)")
        table.add_column("item")
        table.add_column("value")
        for k, v in report["plan"].items():
            for name, value in (v.items() if k == "stages" else [(None, v)]):
                table.add_row(f"stage {name}" if name else k, str(value))
        out.print(table)
        return
    _kv(report)


@app.command()
def experts(urls: List[str] = typer.Argument(..., metavar="URLS...", help="training shards (URLS as for distill)"),
            output: Path = typer.Option(..., "-o", "--out", help="buffer folder (resumable; several processes may fill it)"),
            num_experts: int = typer.Option(..., "--num-experts", help="complete experts wanted in the buffer"),
            epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs per expert (default 50); E+1 snapshots"),
            optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd (MTT, default) | ftd (DATM's GSAM)"),
            test: Optional[List[str]] = typer.Option(None, "--test", help="test shards for per-epoch accuracy"),
            holdout: Optional[float] = typer.Option(None, "--holdout", help="input fraction held out for accuracy (default 0.05, 0 with --test)"),
            seed: Optional[int] = typer.Option(None, "--seed", help="base seed of the experts [default: 0, or the config's]"),
            device: str = DEVICE,
            config: Optional[Path] = typer.Option(None, "--config", help="YAML file of expert config keys"),
            sets: List[str] = typer.Option([], "--set", help="key=value expert config override, e.g. model=convnet_w16"),
            stale_after: float = typer.Option(3600.0, "--stale-lock-seconds", help="break locks without heartbeat for this long"),
            max_bad: int = MAX_BAD,
            max_pixels: int = MAX_PIXELS,
            allow_manifest_urls: bool = ALLOW_URLS,
            as_json: bool = JSON) -> None:
    """Train expert trajectories (MTT/DATM) into a memory-mappable buffer."""
    from .api import check_limits, check_seed, load_real, resolve_device
    from .config import resolve_config
    from .io.atomic import check_not_input
    from .io.urls import is_remote, resolve_urls
    from .train.experts import ExpertConfig, train_experts

    flags = {"epochs": epochs, "optimizer": optimizer, "holdout": holdout, "seed": seed}   # beat --set / --config

    def work(prog: Reporter) -> dict:
        check_limits(num_experts=(num_experts, 1), epochs=(epochs, 1), max_bad=(max_bad, 0),
                     max_pixels=(max_pixels, 1))
        check_seed(seed if seed is not None else 0)
        cfg = resolve_config(ExpertConfig, file=config, sets=sets, flags=flags)
        dev = resolve_device(device)
        inp = resolve_urls(urls, allow_manifest_urls=allow_manifest_urls)
        check_not_input(output, [u for u in inp.urls if not is_remote(u)], inp.folders)
        tinp = resolve_urls(test, allow_manifest_urls=allow_manifest_urls) if test else None
        real = load_real(inp, max_bad=max_bad, max_pixels=max_pixels, progress=prog)
        test_data = load_real(tinp, max_bad=max_bad, max_pixels=max_pixels) if tinp else None
        return train_experts(real, output, num_experts=num_experts, config=cfg, test=test_data, device=dev,
                             stale_after=stale_after, progress=prog)
    run(as_json, work, _kv)


@app.command()
def methods(as_json: bool = JSON) -> None:
    """List registered methods with their options."""
    from .registry import catalog

    rows = [{k: m[k] for k in ("name", "kind", "description", "needs_experts", "options")} for m in catalog()]
    if as_json:
        print(json.dumps({"status": "ok", "methods": rows}, default=str))
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
             device: str = DEVICE,
             random_baseline: bool = typer.Option(True, "--random/--no-random", help="also train a random real subset of the same size"),
             test_limit: Optional[int] = typer.Option(None, "--test-limit", help="evaluate on a fixed random subset of the test set"),
             max_bad: int = MAX_BAD,
             max_pixels: int = MAX_PIXELS,
             allow_manifest_urls: bool = ALLOW_URLS,
             cache_dir: Optional[Path] = CACHE,
             as_json: bool = JSON) -> None:
    """Train fresh networks on a compressed set and report test accuracy (vs random)."""
    from .api import check_limits, check_seed, load_real, resolve_device
    from .io.urls import recorded_urls, resolve_urls
    from .loader import load
    from .train.evaluate import evaluate as api_evaluate

    def work(prog: Reporter) -> dict:
        check_limits(runs=(runs, 1), test_limit=(test_limit, 1), epochs=(epochs, 1), max_bad=(max_bad, 0),
                     max_pixels=(max_pixels, 1))
        check_seed(seed)
        _use_cache(cache_dir)
        dev = resolve_device(device)
        ds = load(target)                        # checks the output (structure, checksums) before any reading
        test_inp = resolve_urls(test, allow_manifest_urls=allow_manifest_urls)
        train_inp = None
        if random_baseline:
            urls = train or recorded_urls(ds.manifest["dcompress"].get("source", {}).get("urls"),
                                          manifest=ds.manifest_path)
            train_inp = resolve_urls(urls, allow_manifest_urls=allow_manifest_urls)
        test_data = load_real(test_inp, max_bad=max_bad, max_pixels=max_pixels)
        train_data = load_real(train_inp, max_bad=max_bad, max_pixels=max_pixels) if train_inp else None
        return api_evaluate(ds, test_data, train=train_data, runs=runs, model=model, epochs=epochs, seed=seed,
                            device=dev, random_baseline=random_baseline, test_limit=test_limit, progress=prog)
    run(as_json, work, _show_eval)


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
            grid: Optional[Path] = typer.Option(None, "--grid", help="PNG path (default OUT/grid.png; the loss curve "
                                                                      "goes beside it as <stem>-loss.png)"),
            as_json: bool = JSON) -> None:
    """Summarise a compressed set; (re)draw its class grid and loss curve PNGs."""
    from .report import figures, summary

    run(as_json, lambda p: {**summary(target), **figures(target, grid)}, _kv)


@app.command()
def verify(target: Path = typer.Argument(..., metavar="OUT"), as_json: bool = JSON) -> None:
    """Re-check every shard against the manifest's sizes, md5 sums and counts (exit 6 on mismatch)."""
    from .io.manifest import verify as api_verify

    run(as_json, lambda p: api_verify(target), _kv)


@app.command()
def teacher(urls: List[str] = typer.Argument(..., metavar="URLS...", help="training shards (URLS as for distill)"),
            output: Path = typer.Option(..., "-o", "--out", help="the teacher's .pt file (its .json sidecar goes "
                                                                  "beside it); load it with --teacher"),
            model: str = typer.Option("auto", "--model", help="network name, or auto: ConvNet-3 w32 up to 64 px a "
                                                              "side, ResNet-18 above"),
            bn: bool = typer.Option(False, "--bn", help="the network's BatchNorm variant (needed by sre2l)"),
            epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs [default: 2]"),
            seed: Optional[int] = typer.Option(None, "--seed", help="teacher seed [default: 0]"),
            sets: List[str] = typer.Option([], "--set", help="key=value teacher config (max_samples, lr, "
                                                             "batch_size, ...; repeatable)"),
            config: Optional[Path] = typer.Option(None, "--config", help="YAML file of teacher config keys"),
            device: str = DEVICE,
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing teacher at -o"),
            max_bad: int = MAX_BAD,
            max_pixels: int = MAX_PIXELS,
            allow_manifest_urls: bool = ALLOW_URLS,
            cache_dir: Optional[Path] = CACHE,
            as_json: bool = JSON) -> None:
    """Train a teacher network on the input (no pretrained weights are downloaded) for --teacher."""
    from .api import teacher as api_teacher

    def work(prog: Reporter) -> dict:
        _use_cache(cache_dir)
        return api_teacher(urls, out=output, model=model, bn=bn, epochs=epochs, seed=seed, sets=sets, config=config,
                           device=device, overwrite=overwrite, max_bad=max_bad, max_pixels=max_pixels,
                           allow_manifest_urls=allow_manifest_urls, progress=prog, log=prog.event)
    run(as_json, work, _kv)


def main() -> None:
    """Console entry point. An interrupted run exits with 130/143 through `os._exit` after
    flushing: after a Ctrl-C early in a run, CPython was seen to re-kill itself with SIGINT at
    shutdown although the KeyboardInterrupt had been handled and reported (the caller saw a
    death by signal, -2, instead of 130); CPython does this when it believes a KeyboardInterrupt
    went unhandled (`unhandled_keyboard_interrupt` in its runtime state)."""
    from .alloc import tune_malloc

    tune_malloc()   # keep freed activations in the heap: no page faults per iteration (docs/performance.md)
    try:
        app()
    except SystemExit as e:
        if e.code in (130, 143):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code)
        raise


if __name__ == "__main__":
    sys.exit(main())
