"""The `dcompress` command line: parse, call the API, print. No algorithm code here.

Progress, reports and the mapping of every exception to an exit code live in `console.py`:
`--json` prints exactly one JSON report on stdout, also on failure and for usage errors.

Over ~400 lines on purpose: it is the list of commands, each a Typer signature whose options
are declared where they are parsed (their help is `--help` and docs/cli.md), a body that
calls one `api/` function, and the table that prints its report.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .console import App, Reporter, human_bytes, out, run, show_report, value_text
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
    show_report(report)


JSON = typer.Option(False, "--json", help="Print one JSON report on stdout.")
DEVICE = typer.Option("auto", "--device", envvar="DCOMPRESS_DEVICE", help="auto | cpu | cuda[:N]")
CACHE = typer.Option(None, "--cache-dir", envvar="DCOMPRESS_CACHE",
                     help="cache for teachers, features and default expert buffers [default: ~/.cache/dcompress]")
MAX_BAD = typer.Option(None, "--max-bad", show_default="100", help="fail (exit 3) past this many corrupt samples")
MAX_PIXELS = typer.Option(MAX_PIXELS_DEFAULT, "--max-pixels",
                          help="skip (as corrupt) images whose header declares more pixels than this")
WORKERS = typer.Option(None, "--workers", help="processes decoding the input into its decoded store on first use "
                                                "[default: one per core]")
ALLOW_URLS = typer.Option(False, "--allow-manifest-urls",
                          help="trust shard urls read from manifests (absolute, '..', pipe:, http:); off: "
                               "only files inside the manifest's folder")
SIZE = typer.Option(None, "--size", help="resize every image to SIZE x SIZE (mixed-size inputs need it; see "
                                         "--resize-mode)")
RESIZE_MODE = typer.Option("crop", "--resize-mode", help="with --size: crop (shorter side to SIZE, centre crop) | "
                                                         "pad (longer side to SIZE, black borders) | stretch")
LABEL_KEY = typer.Option("cls", "--label-key", help="where the label is: cls | txt | any member | json:FIELD[.SUB] "
                                                    "(string labels become classes, see --class-names)")
CLASS_NAMES = typer.Option(None, "--class-names", help="class list file, one name per line in index order "
                                                       "[default: input manifest, classes.txt beside the shards, "
                                                       "sorted string labels]")
CHANNELS = typer.Option(None, "--channels", help="convert every image to 1 (grayscale) or 3 (RGB) channels")


def _input(urls, *, max_bad, max_pixels, allow_manifest_urls, workers, size, resize_mode, label_key, class_names,
           channels):
    """The input of the reading options every command that reads shards takes."""
    from .api.inputs import InputSpec

    return InputSpec.of(urls, max_bad=max_bad, max_pixels=max_pixels, allow_manifest_urls=allow_manifest_urls,
                        workers=workers, size=size, resize_mode=resize_mode, label_key=label_key,
                        class_names=str(class_names) if class_names is not None else None, channels=channels)


# the fair protocol's options, shared by `evaluate --protocol fair` and `frontier`
LR_GRID = typer.Option(None, "--lr-grid", help="fair protocol: comma list of lrs to pick from on the validation "
                                               "split (default 0.001,0.005,0.01,0.05,0.1: DD-Ranking's)")
LR_SEARCH = typer.Option(None, "--lr-search", help="fair protocol: how the lr is picked: grid (every lr trains "
                                                   "the whole schedule; the default) | halving (successive halving: "
                                                   "the best third of the lrs trains on at each rung; "
                                                   "docs/evaluation.md)")
VAL_PER_CLASS = typer.Option(None, "--val-per-class", help="fair protocol: validation images per class held out of "
                                                           "the training input (default 50)")
FULL_EPOCHS = typer.Option(None, "--full-epochs", help="fair protocol: epochs of the cached full-data network (HLR) "
                                                       "(default 5)")
FULL_MAX_SAMPLES = typer.Option(None, "--full-max-samples", help="fair protocol: train the full-data network on a "
                                                                 "seeded subset of this size")
TEST_LIMIT = typer.Option(None, "--test-limit", help="evaluate on a fixed random subset of the test set")


NPROC = typer.Option(1, "--nproc", help="run as N processes on this machine (torchrun's elastic agent; "
                                          "docs/distributed.md)")
MAX_RESTARTS = typer.Option(0, "--max-restarts", help="with --nproc: restart the job from its checkpoints after a "
                                                      "failure, up to this many times")


def _maybe_launch(nproc: int, max_restarts: int, as_json: bool) -> None:
    """`--nproc N` (N > 1, or `--max-restarts R` > 0): start N ranks of this same command under
    torchrun's agent and exit with the job's code; inside a rank nothing happens."""
    from . import dist

    if nproc == 1 and max_restarts == 0:
        return
    if nproc < 1 or max_restarts < 0:
        def refuse(_prog: Reporter) -> dict:
            from .errors import UsageError

            raise UsageError(f"--nproc must be >= 1 and --max-restarts >= 0, got {nproc} and {max_restarts}")
        run(as_json, refuse, _kv)
    if dist.env_world() > 1:               # already a rank of a torchrun job
        return
    argv = dist.strip_option(dist.strip_option(sys.argv[1:], "--nproc"), "--max-restarts")
    raise typer.Exit(dist.launch(nproc, argv, max_restarts=max_restarts))


@app.command()
def shard(src: Path = typer.Argument(..., metavar="SRC", help="idx folder (MNIST/Fashion-MNIST) or ImageFolder tree"),
          dest: Path = typer.Argument(..., metavar="OUT", help="output folder for shards + manifest.json"),
          fmt: str = typer.Option("auto", "--format", help="idx | folder | auto"),
          split: str = typer.Option("train", "--split", help="train | test: the split written (shards "
                                    "<split>-000000.tar, the manifest's split); idx: also which files are read "
                                    "(train-* or t10k-*); an ImageFolder SRC is read whole"),
          shard_size: int = typer.Option(10000, "--shard-size", help="samples per shard"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing shard folder at OUT"),
          size: Optional[int] = SIZE,
          resize_mode: str = RESIZE_MODE,
          channels: Optional[int] = CHANNELS,
          class_names: Optional[Path] = typer.Option(None, "--class-names", help="ImageFolder: class list file (one "
                                                     "folder name per line) fixing the class order [default: sorted "
                                                     "folder names]"),
          max_bad: int = MAX_BAD,
          max_pixels: int = MAX_PIXELS,
          as_json: bool = JSON) -> None:
    """Write WebDataset shards (+ manifest.json) from idx files or an ImageFolder tree.

    With --size (or --channels) every image is decoded, resized and re-encoded as PNG; without,
    ImageFolder files are copied byte for byte."""
    from . import dist
    from .io.sources import make_shards

    def work(p: Reporter) -> dict:
        dist.require_single("dcompress shard")
        return make_shards(src, dest, fmt=fmt, split=split, shard_size=shard_size, overwrite=overwrite,
                           progress=lambda a, b: p(a, b, "sharding"), size=size, resize_mode=resize_mode,
                           channels=channels, class_names=class_names, max_bad=max_bad, max_pixels=max_pixels)
    run(as_json, work, _kv)


@app.command()
def distill(urls: List[str] = typer.Argument(..., metavar="URLS...", help="brace pattern(s), shard list, pipe: URL, or a folder/manifest from `dcompress shard`"),
            method: str = typer.Option(..., "--method", "-m", help="see `dcompress methods`"),
            output: Path = typer.Option(..., "-o", "--out", help="output folder (written atomically)"),
            ipc: Optional[int] = typer.Option(None, "--ipc", help="images per class"),
            ratio: Optional[float] = typer.Option(None, "--ratio", help="fraction of the input to keep, in (0, 1]"),
            budget: Optional[str] = typer.Option(None, "--budget", help="bytes the output may take (50MB, 1.5GiB, "
                                                 "500KB) or a share of the input's (1%); picks the IPC"),
            image_format: str = typer.Option("png", "--image-format", help="png | jpeg:Q | webp:Q (selection "
                                             "methods)"),
            sample_json: bool = typer.Option(False, "--sample-json", help="also write each sample's .json"),
            exact_images: Optional[bool] = typer.Option(None, "--exact-images/--no-exact-images", help="methods that "
                                                        "optimise pixels: also write each image's exact float .npy "
                                                        "(their default) or keep pixels in range and write the "
                                                        "8-bit PNG alone"),
            seed: Optional[int] = typer.Option(None, "--seed", help="[default: 0]"),
            device: Optional[str] = typer.Option(None, "--device", envvar="DCOMPRESS_DEVICE",
                                                 help="auto | cpu | cuda[:N] [default: auto]"),
            config: Optional[Path] = typer.Option(None, "--config", help="YAML file of method config keys and run "
                                                  "options (ipc, ratio, seed, device, labels, label_topk, shard_size, "
                                                  "ckpt_every, teacher, experts); flags and --set win over it"),
            sets: List[str] = typer.Option([], "--set", help="key=value config override (repeatable)"),
            resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from the last checkpoint"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output at -o"),
            labels: Optional[str] = typer.Option(None, "--labels", help="auto | hard | teacher | learned | views "
                                                 "(the teacher's logits of E views per image) | online (ship the "
                                                 "teacher) [default: auto]"),
            label_views: Optional[int] = typer.Option(None, "--label-views", help="views / online: views per image "
                                                      "(E) [default: the evaluation protocol's passes]"),
            label_sets: List[str] = typer.Option([], "--label-set", help="views / online: key=value of the view "
                                                 "recipe (min_scale, max_scale, flip, cutmix, temperature; "
                                                 "repeatable)"),
            teacher: Optional[Path] = typer.Option(None, "--teacher", help="teacher state dict (.pt + .json sidecar)"),
            teacher_sets: List[str] = typer.Option([], "--teacher-set", help="key=value for a teacher trained here "
                                                   "(model, epochs, max_samples, lr, ...; repeatable)"),
            max_bad: int = MAX_BAD,
            max_pixels: int = MAX_PIXELS,
            allow_manifest_urls: bool = ALLOW_URLS,
            workers: Optional[int] = WORKERS,
            shard_size: Optional[int] = typer.Option(None, "--shard-size", help="most samples per output shard "
                                                     "(smaller sets: at least 8 shards) [default: 1000]"),
            ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", help="checkpoint period (iterations) "
                                                     "[default: 50]"),
            experts: Optional[Path] = typer.Option(None, "--experts", help="expert buffer (mtt, datm)"),
            bins: Optional[int] = typer.Option(None, "--bins", help="number of DQ bins"),
            features: Optional[str] = typer.Option(None, "--features", help="dq: teacher | grad | FILE.npy"),
            keep_bins: bool = typer.Option(False, "--keep-bins", help="dq: also write all bins' index lists"),
            from_bins: Optional[Path] = typer.Option(None, "--from-bins", help="dq: re-sample bins saved by --keep-bins"),
            dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, write nothing"),
            cache_dir: Optional[Path] = CACHE,
            size: Optional[int] = SIZE,
            resize_mode: str = RESIZE_MODE,
            label_key: str = LABEL_KEY,
            class_names: Optional[Path] = CLASS_NAMES,
            channels: Optional[int] = CHANNELS,
            label_topk: Optional[int] = typer.Option(None, "--label-topk", help="store only each sample's K "
                                                     "largest logits (+ class indices); at most the class count"),
            as_json: bool = JSON,
            nproc: int = NPROC, max_restarts: int = MAX_RESTARTS) -> None:
    """Compress a dataset with a method (selection or synthesis)."""
    _maybe_launch(nproc, max_restarts, as_json)

    def work(prog: Reporter) -> dict:
        from .api.distill import distill_request
        from .api.request import DistillRequest

        _use_cache(cache_dir)
        req = DistillRequest.make(method, config=config, sets=sets, teacher_sets=teacher_sets, teacher=teacher,
                                  experts=experts, ipc=ipc, ratio=ratio, seed=seed, device=device, labels=labels,
                                  label_topk=label_topk, label_views=label_views, label_sets=label_sets,
                                  shard_size=shard_size, ckpt_every=ckpt_every, budget=budget,
                                  image_format=image_format, sample_json=sample_json, exact_images=exact_images,
                                  resume=resume, overwrite=overwrite,
                                  # method config flags: an explicit flag beats --set and --config (None = not given)
                                  flags={"bins": bins, "features": features, "keep_bins": keep_bins or None,
                                         "from_bins": str(from_bins) if from_bins else None})
        inputs = _input(urls, max_bad=max_bad, max_pixels=max_pixels, allow_manifest_urls=allow_manifest_urls,
                        workers=workers, size=size, resize_mode=resize_mode, label_key=label_key,
                        class_names=class_names, channels=channels)
        return distill_request(req, inputs, out=output, dry_run=dry_run, progress=prog, log=prog.event)
    run(as_json, work, _show_distill)


def _show_distill(report: dict) -> None:
    if report.get("status") == "dry-run":
        table = Table(title="plan (nothing written)")
        table.add_column("item")
        table.add_column("value", overflow="fold")
        for k, v in report["plan"].items():
            for name, value in (v.items() if k in ("stages", "estimate") else [(None, v)]):
                label = f"{k.removesuffix('s')} {name.removesuffix('_s').replace('_', ' ')}" if name else k
                table.add_row(label.replace("_", " "), value_text(name or k, value))
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
            workers: Optional[int] = WORKERS,
            size: Optional[int] = SIZE,
            resize_mode: str = RESIZE_MODE,
            label_key: str = LABEL_KEY,
            class_names: Optional[Path] = CLASS_NAMES,
            channels: Optional[int] = CHANNELS,
            as_json: bool = JSON,
            nproc: int = NPROC, max_restarts: int = MAX_RESTARTS) -> None:
    """Train expert trajectories (MTT/DATM) into a memory-mappable buffer."""
    _maybe_launch(nproc, max_restarts, as_json)

    def work(prog: Reporter) -> dict:
        from .api.experts import experts as api_experts

        inputs = _input(urls, max_bad=max_bad, max_pixels=max_pixels, allow_manifest_urls=allow_manifest_urls,
                        workers=workers, size=size, resize_mode=resize_mode, label_key=label_key,
                        class_names=class_names, channels=channels)
        return api_experts(inputs, out=output, num_experts=num_experts, epochs=epochs, optimizer=optimizer,
                           test=test, holdout=holdout, seed=seed, device=device, config=config, sets=sets,
                           stale_after=stale_after, progress=prog, log=prog.event)
    run(as_json, work, _kv)


@app.command()
def methods(name: Optional[str] = typer.Argument(None, metavar="METHOD", help="one method: its config keys, "
                                                 "types, meanings and defaults"),
            as_json: bool = JSON) -> None:
    """List registered methods with their options, or one method's config keys (`methods dm`)."""
    from .registry import catalog, catalog_entry

    if name is not None:
        run(as_json, lambda p: {"method": catalog_entry(name)}, _show_method)
        return
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
    out.print("`dcompress methods NAME` explains one method's keys", highlight=False)


def _show_method(report: dict) -> None:
    m = report["method"]
    needs = [w for w, flag in (("a teacher", m["needs_teacher"]), ("an expert buffer (--experts)",
                                                                  m["needs_experts"])) if flag]
    out.print(f"{m['name']} ({m['kind']}): {m['description']}" + (f"; needs {' and '.join(needs)}" if needs else ""),
              highlight=False, markup=False, soft_wrap=True)
    if not m["options"]:
        out.print("no config keys", highlight=False)
        return
    table = Table(title="config keys (--set key=value, or in --config FILE)")
    for col in ("key", "type", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for k, default in m["options"].items():
        table.add_row(k, m.get("option_types", {}).get(k, ""), "–" if default is None else str(default),
                      m.get("option_help", {}).get(k, "–"))
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
             test_limit: Optional[int] = TEST_LIMIT,
             max_bad: int = MAX_BAD,
             max_pixels: int = MAX_PIXELS,
             allow_manifest_urls: bool = ALLOW_URLS,
             workers: Optional[int] = WORKERS,
             cache_dir: Optional[Path] = CACHE,
             size: Optional[int] = typer.Option(None, "--size", help="resize test/train images to SIZE x SIZE "
                                                "[default: as the set was distilled, from its manifest]"),
             resize_mode: Optional[str] = typer.Option(None, "--resize-mode", help="crop | pad | stretch "
                                                       "[default: from the manifest]"),
             label_key: Optional[str] = typer.Option(None, "--label-key", help="label member or json:FIELD of the "
                                                     "test/train shards [default: from the manifest]"),
             class_names: Optional[Path] = typer.Option(None, "--class-names", help="class list file [default: the "
                                                        "compressed set's class names]"),
             channels: Optional[int] = typer.Option(None, "--channels", help="1 | 3 [default: from the manifest]"),
             protocol: str = typer.Option("own", "--protocol", help="own: the set's own protocol | fair: set vs "
                                          "random subsets with the same recipe and labels, lr grid on a validation "
                                          "split, DD-Ranking scores (docs/evaluation.md)"),
             models: Optional[str] = typer.Option(None, "--models", help="comma list of networks: a cross-architecture "
                                                  "table, e.g. convnet,resnet18"),
             lr_grid: Optional[str] = LR_GRID,
             lr_search: Optional[str] = LR_SEARCH,
             val_per_class: Optional[int] = VAL_PER_CLASS,
             ars: bool = typer.Option(True, "--ars/--no-ars", help="fair: also train with the augmentation switched "
                                      "for the augmentation-robust score"),
             full_epochs: Optional[int] = FULL_EPOCHS,
             full_max_samples: Optional[int] = FULL_MAX_SAMPLES,
             teacher: Optional[Path] = typer.Option(None, "--teacher", help="fair: the teacher that relabels the "
                                                    "random subsets (needed when the set used a user's --teacher)"),
             min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", help="gate: exit 9 when the set's "
                                                          "mean accuracy (%) is below PCT"),
             min_gain: Optional[float] = typer.Option(None, "--min-gain-over-random", help="gate: exit 9 when the set "
                                                      "beats random subsets by fewer than PTS points"),
             outside_reader: bool = typer.Option(True, "--outside-reader/--no-outside-reader", help="also train the "
                                                 "set as an outside reader loads it (its .png, not the exact .npy) "
                                                 "when the two differ: --runs more networks"),
             as_json: bool = JSON,
             nproc: int = NPROC, max_restarts: int = MAX_RESTARTS) -> None:
    """Train fresh networks on a compressed set and report test accuracy (vs random).

    The test and training shards are decoded as the set's input was (its manifest's
    `source.decode`: size, resize mode, label key, channels) and their labels mapped with the
    set's class names, unless options say otherwise."""
    _maybe_launch(nproc, max_restarts, as_json)

    def work(prog: Reporter) -> dict:
        from .api.evaluate import evaluate as api_evaluate

        _use_cache(cache_dir)
        return api_evaluate(target, test, train=train, runs=runs, model=model, epochs=epochs, seed=seed,
                            device=device, random_baseline=random_baseline, test_limit=test_limit, protocol=protocol,
                            models=models, lr_grid=lr_grid, lr_search=lr_search, val_per_class=val_per_class,
                            ars=ars, full_epochs=full_epochs, full_max_samples=full_max_samples, teacher=teacher,
                            min_accuracy=min_accuracy, min_gain_over_random=min_gain, max_bad=max_bad, max_pixels=max_pixels, allow_manifest_urls=allow_manifest_urls,
                            workers=workers, size=size, resize_mode=resize_mode, label_key=label_key,
                            class_names=class_names, channels=channels, outside_reader=outside_reader,
                            progress=prog, log=prog.event)
    run(as_json, work, _show_eval)


def _show_eval(r: dict) -> None:
    if r.get("models"):
        _show_models(r)
        return
    if r.get("evaluation") == "fair":
        _show_fair(r)
        return
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
    _show_reader(r)


def _show_reader(r: dict) -> None:
    """The outside reader's line (what webdataset, timm, HF load) and a lossy random side's format."""
    from .train.outside_reader import line

    text = line(r.get("outside_reader"))
    if text:
        out.print(text, highlight=False)
    if r.get("random_images") not in (None, "png"):
        out.print(f"random subsets stored as {r['random_images']} like the set, then decoded", highlight=False)


def _pm(s: dict | None) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s else "–"


def _show_fair(r: dict) -> None:
    f, sc = r["fair"], r["scores"]
    search = ", lr by successive halving" if f.get("lr_search") == "halving" else ""
    table = Table(title=f"{r['method']}: {r['samples']} images, fair protocol, {f['runs']} runs{search}, test on "
                        f"{r['test_samples']}")
    for col in ("labels", "augmentation", "set acc %", "set lr", "random acc %", "random lr", "set − random"):
        table.add_column(col)
    for row in f["results"]:
        c, rr = row["compressed"], row["random"]
        table.add_row(row["labels"], row["aug"], _pm(c), f"{c['lr']:g} ({c['lr_source']})", _pm(rr), f"{rr['lr']:g}",
                      f"{c['mean'] - rr['mean']:+.2f}")
    out.print(table)
    full = f["full_data"]
    out.print(f"full data (hard labels, {full['samples']} images{', cached' if full['cached'] else ''}): "
              f"{full['percent']:.2f} %", highlight=False)
    line = (f"HLR {_pm(sc['hlr'])} pts · IOR {_pm(sc['ior'])} pts · LRS {_pm(sc['lrs'])} %"
            + (f" · ARS {_pm(sc['ars'])} %" if "ars" in sc else ""))
    out.print(line, highlight=False)
    _show_reader(r)


def _show_models(r: dict) -> None:
    fair = r.get("evaluation") == "fair"
    table = Table(title=f"{r['method']}: {r['samples']} images, cross-architecture ({r.get('evaluation', 'own')} "
                        "protocol)")
    reader = any((m.get("outside_reader") or {}).get("mean") is not None for m in r["models"])
    cols = (["model", "set acc %"] + (["outside reader %"] if reader else []) + ["random acc %", "set − random"]
            + (["LRS %", "ARS %"] if fair else []))
    for col in cols:
        table.add_column(col)
    for m in r["models"]:
        outside = m.get("outside_reader") or {}
        cells = ([m["model"], _pm(m["compressed"])] + ([_pm(outside) if "mean" in outside else "–"] if reader else [])
                 + [_pm(m["random"]), f"{m['delta']:+.2f}" if m["delta"] is not None else "–"])
        if fair:
            cells += [_pm(m["scores"]["lrs"]), _pm(m["scores"].get("ars"))]
        table.add_row(*cells)
    out.print(table)
    if not reader:
        _show_reader(r)


@app.command()
def frontier(urls: List[str] = typer.Argument(..., metavar="URLS...", help="training shards (URLS as for distill)"),
             test: List[str] = typer.Option(..., "--test", help="test shards (URLS as for distill)"),
             output: Path = typer.Option(..., "-o", "--out", help="report folder (resumable: rerun the same command)"),
             methods: str = typer.Option("random,herding", "--methods", help="comma list, e.g. random,herding,dq,dm,rded"),
             budgets: str = typer.Option("0.05%,0.5%,5%", "--budgets", help="comma list of byte budgets: sizes "
                                         "(500KB, 5MB, 1GiB) or shares of the input (0.5%)"),
             labels: str = typer.Option("hard", "--labels", help="comma list of distill label modes: hard, teacher, "
                                        "views, online, auto"),
             epochs: Optional[int] = typer.Option(None, "--epochs", help="override every protocol's epochs"),
             model: Optional[str] = typer.Option(None, "--model", help="evaluation network of every point (default: "
                                                 "each method's protocol model, e.g. convnet)"),
             runs: int = typer.Option(2, "--runs", help="fresh networks per side and point"),
             lr_grid: Optional[str] = LR_GRID,
             lr_search: Optional[str] = LR_SEARCH,
             val_per_class: Optional[int] = VAL_PER_CLASS,
             test_limit: Optional[int] = TEST_LIMIT,
             full_epochs: Optional[int] = FULL_EPOCHS,
             full_max_samples: Optional[int] = FULL_MAX_SAMPLES,
             seed: int = typer.Option(0, "--seed"),
             device: str = DEVICE,
             sets: List[str] = typer.Option([], "--set", help="method:key=value config override, or "
                                            "teacher:key=value for the teacher trained here (repeatable)"),
             teacher: Optional[Path] = typer.Option(None, "--teacher", help="one teacher (.pt + .json) for every "
                                                    "point"),
             overwrite: bool = typer.Option(False, "--overwrite", help="replace a report of another input or "
                                            "settings at -o"),
             min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", help="gate: exit 9 when a point's "
                                                          "mean accuracy (%) is below PCT"),
             min_gain: Optional[float] = typer.Option(None, "--min-gain-over-random", help="gate: exit 9 when a "
                                                      "point beats random subsets by fewer than PTS points"),
             exact_images: Optional[bool] = typer.Option(None, "--exact-images/--no-exact-images", help="methods "
                                                         "that optimise pixels: with or without the exact .npy "
                                                         "(distill's option; default: theirs)"),
             max_bad: int = MAX_BAD,
             max_pixels: int = MAX_PIXELS,
             allow_manifest_urls: bool = ALLOW_URLS,
             workers: Optional[int] = WORKERS,
             cache_dir: Optional[Path] = CACHE,
             as_json: bool = JSON,
             nproc: int = NPROC, max_restarts: int = MAX_RESTARTS) -> None:
    """Accuracy vs bytes: distil every method x budget x labels and evaluate each point against
    random subsets of the same bytes (fair protocol); writes frontier.json/.csv/.png/.md.

    Exit 1 (status incomplete) when a point failed (recorded, the others go on), 9 when a gate
    missed; rerun the same command to resume (docs/frontier.md). `--nproc N` spreads the points
    over N processes, a (labels, budget) group at a time; the report is the one-process one."""
    _maybe_launch(nproc, max_restarts, as_json)

    def work(prog: Reporter) -> dict:
        from .api.frontier import frontier as api_frontier

        _use_cache(cache_dir)
        return api_frontier(urls, test=test, out=output, methods=methods, budgets=budgets, labels=labels,
                            epochs=epochs, model=model, runs=runs, lr_grid=lr_grid, lr_search=lr_search,
                            val_per_class=val_per_class,
                            test_limit=test_limit, full_epochs=full_epochs, full_max_samples=full_max_samples,
                            seed=seed, device=device, sets=sets, teacher=teacher, overwrite=overwrite,
                            min_accuracy=min_accuracy, min_gain_over_random=min_gain, exact_images=exact_images,
                            max_bad=max_bad,
                            max_pixels=max_pixels, allow_manifest_urls=allow_manifest_urls, workers=workers,
                            progress=prog, log=prog.event)
    run(as_json, work, _show_frontier)


def _show_frontier(r: dict) -> None:
    from .io.frontier_report import human

    table = Table(title=f"accuracy vs bytes: {len(r['points'])} points, fair protocol, "
                        f"{r['settings']['runs']} runs")
    for col in ("budget", "method", "labels", "bytes", "IPC", "accuracy %", "random %", "gain", "s"):
        table.add_column(col)
    for p in r["points"]:
        if p["status"] != "ok":
            table.add_row(p["budget"], p["method"], p["labels"], "–", "–", f"failed: {p['error']}", "", "", "")
            continue
        table.add_row(p["budget"], p["method"], p["labels"], human(p["bytes"]), str(p["ipc"]), _pm(p["accuracy"]),
                      _pm(p["random"]), f"{p['gain']:+.2f}", f"{p['seconds']['total']:.0f}")
    out.print(table)
    for b in r["best"]:
        out.print(f"best at {b['budget']}: {b['method']} ({b['labels']}) {b['accuracy']:.2f} %"
                  f"{' (random is as good)' if b['random_as_good'] else ''}", highlight=False)
    out.print(f"report: {r['out']}/frontier.md (.json, .csv, .png)", highlight=False)


@app.command()
def inspect(target: Path = typer.Argument(..., metavar="OUT"),
            grid: Optional[Path] = typer.Option(None, "--grid", help="PNG path (default OUT/grid.png; the loss curve "
                                                                      "goes beside it as <stem>-loss.png)"),
            as_json: bool = JSON) -> None:
    """Summarise a compressed set; (re)draw its class grid and loss curve PNGs."""
    from .report import inspect as api_inspect

    run(as_json, lambda p: api_inspect(target, grid), _kv)


@app.command()
def verify(target: Path = typer.Argument(..., metavar="OUT"), as_json: bool = JSON) -> None:
    """Re-check every shard against the manifest's sizes, md5 sums and counts (exit 6 on mismatch)."""
    from .io.manifest import verify as api_verify

    run(as_json, lambda p: api_verify(target), _kv)


cache_app = typer.Typer(cls=App, no_args_is_help=True, help="List and reclaim the cache: decoded stores, "
                                                               "teachers, expert buffers, quarantine.")
app.add_typer(cache_app, name="cache")
KIND = typer.Option(None, "--kind", help="stores | teachers | experts | quarantine | evaluations")


def _cache_root(cache_dir: Optional[Path]) -> Path:
    from .cache import cache_root

    _use_cache(cache_dir)
    return cache_root()


def _show_cache(r: dict) -> None:
    if "entries" not in r:
        _kv(r)
        return
    table = Table(title=f"{r['cache']} ({human_bytes(r['total_bytes'])})")
    for col in ("entry", "size", "last used", "what"):
        table.add_column(col, overflow="fold")
    for e in r["entries"]:
        table.add_row(e["name"], human_bytes(e["bytes"]), e["last_used"], e["description"])
    out.print(table)


@cache_app.command("ls")
def cache_ls(kind: Optional[str] = KIND, cache_dir: Optional[Path] = CACHE, as_json: bool = JSON) -> None:
    """List cache entries (oldest use first) with their size and what they hold."""
    from .cache import ls

    run(as_json, lambda p: ls(_cache_root(cache_dir), kind), _show_cache)


@cache_app.command("rm")
def cache_rm(names: Optional[List[str]] = typer.Argument(None, metavar="ENTRY...", help="entries as `cache ls` names them"),
             all_entries: bool = typer.Option(False, "--all", help="remove every entry (of --kind)"),
             kind: Optional[str] = KIND, cache_dir: Optional[Path] = CACHE, as_json: bool = JSON) -> None:
    """Remove cache entries (a decoded store in use by a running command: exit 8)."""
    from .cache import rm

    run(as_json, lambda p: rm(_cache_root(cache_dir), names or [], all_entries=all_entries, kind=kind), _kv)


@cache_app.command("prune")
def cache_prune(older_than: Optional[float] = typer.Option(None, "--older-than", help="remove entries unused for more than this many days"),
                max_size: Optional[str] = typer.Option(None, "--max-size", help="then remove the least recently used until the cache fits, e.g. 50G"),
                dry_run: bool = typer.Option(False, "--dry-run", help="list what would go, remove nothing"),
                cache_dir: Optional[Path] = CACHE, as_json: bool = JSON) -> None:
    """Reclaim space: old or least recently used entries, and leftovers of killed runs."""
    from .cache import prune

    run(as_json, lambda p: prune(_cache_root(cache_dir), older_than_days=older_than, max_size=max_size,
                                 dry_run=dry_run), _kv)


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
            workers: Optional[int] = WORKERS,
            cache_dir: Optional[Path] = CACHE,
            size: Optional[int] = SIZE,
            resize_mode: str = RESIZE_MODE,
            label_key: str = LABEL_KEY,
            class_names: Optional[Path] = CLASS_NAMES,
            channels: Optional[int] = CHANNELS,
            as_json: bool = JSON,
            nproc: int = NPROC, max_restarts: int = MAX_RESTARTS) -> None:
    """Train a teacher network on the input (no pretrained weights are downloaded) for --teacher."""
    _maybe_launch(nproc, max_restarts, as_json)

    def work(prog: Reporter) -> dict:
        from .api.teacher import teacher as api_teacher

        _use_cache(cache_dir)
        inputs = _input(urls, max_bad=max_bad, max_pixels=max_pixels, allow_manifest_urls=allow_manifest_urls,
                        workers=workers, size=size, resize_mode=resize_mode, label_key=label_key,
                        class_names=class_names, channels=channels)
        return api_teacher(inputs, out=output, model=model, bn=bn, epochs=epochs, seed=seed, sets=sets,
                           config=config, device=device, overwrite=overwrite, progress=prog, log=prog.event)
    run(as_json, work, _kv)


def main() -> None:
    """Console entry point. An interrupted run exits with 130/143 through `os._exit` after
    flushing: after a Ctrl-C early in a run, CPython was seen to re-kill itself with SIGINT at
    shutdown although the KeyboardInterrupt had been handled and reported (the caller saw a
    death by signal, -2, instead of 130); CPython does this when it believes a KeyboardInterrupt
    went unhandled (`unhandled_keyboard_interrupt` in its runtime state).

    A torchrun rank also leaves through `dist.finish` once its work is done, reported and flushed
    (outputs are complete on disk by then: every file is written by rename after fsync): a rank
    whose job had finished was seen to die with SIGABRT in interpreter teardown, and torchrun
    then failed the whole job (exit 1)."""
    from .alloc import tune_malloc

    tune_malloc()   # keep freed activations in the heap: no page faults per iteration (docs/performance.md)
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        dist = sys.modules.get(f"{__package__}.dist")   # loaded (with torch) only by commands that train
        if dist is not None and dist.joined():
            dist.finish(code)
        if code in (130, 143):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise


if __name__ == "__main__":
    sys.exit(main())
