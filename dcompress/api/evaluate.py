"""`evaluate`: fresh networks trained on a compressed set, tested on shards decoded as the set's
input was, next to random real subsets (own protocol) or under the fair protocol."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ..errors import InputDataError, UsageError
from ..limits import MAX_PIXELS
from .checks import check_limits, check_seed, resolve_device
from .inputs import InputSpec, ProgressFn, decode_options
from .record import input_report

if TYPE_CHECKING:
    import torch

    from ..core import RealData
    from ..io.loader import CompressedDataset


def evaluate(out: str | Path | CompressedDataset, test: str | Iterable[str] | RealData, *,
             train: str | Iterable[str] | RealData | None = None, runs: int = 3, model: str | None = None,
             epochs: int | None = None, seed: int = 0, device: str | torch.device = "auto",
             random_baseline: bool = True, test_limit: int | None = None, protocol: str = "own",
             models: str | Sequence[str] | None = None, lr_grid: str | Sequence[float] | None = None,
             lr_search: str | None = None, val_per_class: int | None = None, ars: bool = True,
             full_epochs: int | None = None, full_max_samples: int | None = None, teacher: str | Path | None = None,
             max_bad: int | None = None,
             max_pixels: int | None = MAX_PIXELS, allow_manifest_urls: bool = False, workers: int | None = None,
             size: int | None = None, resize_mode: str | None = None, label_key: str | None = None,
             class_names: str | Path | Iterable[str] | None = None, channels: int | None = None,
             min_accuracy: float | None = None, min_gain_over_random: float | None = None,
             outside_reader: bool = True, progress: ProgressFn | None = None,
             log: Callable[[dict], None] | None = None) -> dict:
    """Trains `runs` fresh networks on the compressed set `out` and reports their accuracy on
    `test` (urls, or already read RealData), next to random real subsets of the same size drawn
    from `train` (default: the set's recorded source shards) unless `random_baseline` is off.

    The test and training shards are decoded as the set's input was (its manifest's
    `source.decode`: size, resize mode, label key, channels) and their labels mapped with the
    set's class names; `size`, `resize_mode`, `label_key`, `channels`, `class_names` given here
    win. `protocol="fair"`: same recipe and labels for set and random subsets, lr picked on a
    validation split (`lr_grid`, `val_per_class`; `lr_search`: grid, or halving for successive
    halving), DD-Ranking's scores (`ars`: also the augmentation-robust one;
    `full_epochs`/`full_max_samples`: the full-data network; `teacher`: the teacher that
    relabels the random subsets). `models`: a cross-architecture table. docs/evaluation.md.

    What an outside reader loads: a set with exact `.npy` tensors that differ from its image
    member is also trained on the member (the `.png` webdataset, wids, timm and HF decode), same
    recipe, lr, inits and seeds, and reported as `outside_reader`; `outside_reader=False` skips
    those networks (the pixel gap is still reported). Random subsets of a `jpeg:Q` / `webp:Q`
    set are encoded the same way (`random_images`).

    CI gates: `min_accuracy` (percent) and `min_gain_over_random` (points over the random
    subsets) add a `gates` block to the report; a miss makes its `status` "gate_failed" (the
    CLI exits 9, `errors.GateFailed`). With `models`, every network must pass.
    """
    from ..io.loader import CompressedDataset, load
    from ..train.evaluate import check_models, evaluate as train_and_test

    check_limits(runs=(runs, 1), test_limit=(test_limit, 1), epochs=(epochs, 1), max_bad=(max_bad, 0),
                 max_pixels=(max_pixels, 1), workers=(workers, 1))
    check_seed(seed)
    check_gates(min_accuracy, min_gain_over_random, random_baseline)
    fair_cfg, full_cfg = fair_configs(protocol, lr_grid, val_per_class, ars, full_epochs, full_max_samples, teacher,
                                      lr_search=lr_search)
    if isinstance(models, str):
        models = models.split(",")
    names = check_models(models, model) if models is not None else None
    if model is not None:
        check_models([model])
    dev = resolve_device(device) if isinstance(device, str) else device
    ds = out if isinstance(out, CompressedDataset) else load(out)   # checks the output before any reading
    given = {"size": size, "resize_mode": resize_mode, "label_key": label_key, "channels": channels}
    opts = recorded_decode(ds, given, max_pixels=max_pixels,
                           class_names=class_names if class_names is not None else list(ds.block.class_names))

    def spec(urls) -> InputSpec:
        return InputSpec.of(urls, max_bad=max_bad, workers=workers, allow_manifest_urls=allow_manifest_urls,
                            decode=opts)

    note = (lambda text: log({"event": "note", "text": text})) if log else None
    test_in = spec(test) if not _is_real(test) else None
    train_in = None
    if random_baseline and not _is_real(train):
        train_in = spec(train or recorded_train(ds, protocol))
        train_in.resolved                                 # a bad --train fails before the test set is read
    test_data = test_in.read(note=note) if test_in else test
    train_data = train_in.read(note=note) if train_in else (train if _is_real(train) else None)
    report = train_and_test(ds, test_data, train=train_data, runs=runs, model=model, epochs=epochs, seed=seed,
                            device=dev, random_baseline=random_baseline, test_limit=test_limit, progress=progress,
                            protocol=protocol, models=names, fair=fair_cfg, full_data=full_cfg, teacher=teacher,
                            outside_reader=outside_reader, log=log)
    reads = {k: input_report(d)["input"] for k, d in (("test", test_data), ("train", train_data))
             if _is_real(d) and input_report(d)}
    report = {**report, "input": reads} if reads and isinstance(report, dict) else report
    return apply_gates(report, min_accuracy, min_gain_over_random)


def check_gates(min_accuracy: float | None, min_gain: float | None, random_baseline: bool) -> None:
    """UsageError for a gate out of range, or a gain gate without the random subsets it compares with."""
    import math

    if min_accuracy is not None and not (math.isfinite(min_accuracy) and 0 <= min_accuracy <= 100):
        raise UsageError(f"--min-accuracy is a percentage in [0, 100], got {min_accuracy}")
    if min_gain is not None and not math.isfinite(min_gain):
        raise UsageError(f"--min-gain-over-random must be a number of points, got {min_gain}")
    if min_gain is not None and not random_baseline:
        raise UsageError("--min-gain-over-random compares the set with random subsets: drop --no-random")


def apply_gates(report: dict, min_accuracy: float | None, min_gain: float | None) -> dict:
    """`report` with its `gates` (one row per gate and network: `gate`, `model`, `measured`,
    `threshold`, `passed`) and `status` "gate_failed" + `exit_code` 9 + `failed` (the rows
    that missed) when any missed. The measured values are the report's mean accuracy and its
    mean minus the random subsets' (per network with `models`)."""
    if min_accuracy is None and min_gain is None:
        return report
    from ..errors import GateFailed

    rows = report.get("models") or [{"model": report.get("protocol", {}).get("model"), **report}]
    gates = []
    for r in rows:
        acc = r["compressed"]["mean"]
        if min_accuracy is not None:
            gates.append({"gate": "min_accuracy", "model": r["model"], "measured": acc, "threshold": min_accuracy,
                          "passed": acc >= min_accuracy})
        if min_gain is not None:
            gain = round(acc - r["random"]["mean"], 2)
            gates.append({"gate": "min_gain_over_random", "model": r["model"], "measured": gain,
                          "threshold": min_gain, "passed": gain >= min_gain})
    failed = [g for g in gates if not g["passed"]]
    if not failed:
        return {**report, "gates": gates}
    why = "; ".join(f"{g['gate']}: {g['measured']} < {g['threshold']} ({g['model']})" for g in failed)
    return {"status": "gate_failed", **report, "gates": gates, "failed": failed, "error": f"gate failed: {why}",
            "exit_code": GateFailed.exit_code}


def _is_real(x) -> bool:
    from ..core import RealData

    return isinstance(x, RealData)


def recorded_decode(ds: CompressedDataset, given: dict, *, max_pixels: int | None, class_names):
    """The DecodeOptions that read shards as the set's input was read: the manifest's
    `source.decode`, with the options in `given` that are not None winning. A value the manifest
    recorded that this version refuses is an InputDataError naming the manifest key (the user's
    own bad value stays a UsageError)."""
    recorded = ds.block.source.decode if ds.block.source is not None else None
    recorded = recorded if isinstance(recorded, dict) else {}
    kw = {k: v if v is not None else recorded.get(k) for k, v in given.items()}
    try:
        return decode_options(max_pixels=max_pixels, class_names=class_names,
                              **{k: v for k, v in kw.items() if v is not None})
    except UsageError as e:                  # the user's options, or the values the manifest recorded?
        try:
            decode_options(max_pixels=max_pixels, **{k: v for k, v in given.items() if v is not None})
        except UsageError:
            raise e from None
        raise InputDataError(f"cannot decode as recorded: {e.detail}", path=str(ds.manifest_path),
                             key="dcompress.source.decode") from None


def fair_configs(protocol: str, lr_grid, val_per_class, ars: bool, full_epochs, full_max_samples, teacher, *,
                 lr_search: str | None = None):
    """FairConfig and FullDataConfig from the fair-only options (UsageError when given without
    protocol fair, or out of range); (None, None) for the own protocol."""
    from ..train.evaluate import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    fair_only = {"--lr-grid": lr_grid, "--lr-search": lr_search, "--val-per-class": val_per_class,
                 "--full-epochs": full_epochs, "--full-max-samples": full_max_samples, "--teacher": teacher,
                 "--no-ars": None if ars else True}
    if protocol != "fair":
        given = [k for k, v in fair_only.items() if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to --protocol fair")
        return None, None
    from ..config import resolve_config
    from ..train.fair import FairConfig, FullDataConfig, parse_grid

    if lr_grid is not None:
        lr_grid = parse_grid(lr_grid if isinstance(lr_grid, str) else ",".join(map(str, lr_grid)))
    fair = resolve_config(FairConfig, flags={"lr_grid": lr_grid, "lr_search": lr_search,
                                             "val_per_class": val_per_class, "ars": ars})
    return fair, resolve_config(FullDataConfig, flags={"epochs": full_epochs, "max_samples": full_max_samples})


def recorded_train(ds: CompressedDataset, protocol: str) -> list[str]:
    """The set's recorded source shards; under protocol fair a missing one says what fair needs."""
    from ..io.urls import recorded_urls

    try:
        return recorded_urls(ds.manifest["dcompress"].get("source", {}).get("urls"), manifest=ds.manifest_path)
    except InputDataError as e:
        if protocol != "fair":
            raise
        raise InputDataError(f"--protocol fair needs the training input (random subsets, validation split, "
                             f"full-data accuracy): {e.detail.replace('; pass --train URLS or --no-random', '')}; "
                             "pass --train URLS", path=e.path, key=e.key) from None
