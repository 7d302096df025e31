"""`experts`: expert trajectories (MTT/DATM) trained on an input into a resumable buffer."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..config import resolve_config
from ..core import RealData
from ..limits import MAX_PIXELS
from .checks import check_limits, check_seed, resolve_device
from .inputs import InputSpec, ProgressFn, as_input
from .record import input_report


def experts(urls, *, out: str | Path, num_experts: int, epochs: int | None = None, optimizer: str | None = None,
            test: str | Iterable[str] | None = None, holdout: float | None = None, seed: int | None = None,
            device: str = "auto", config: str | Path | None = None, sets: Iterable[str] = (),
            stale_after: float = 3600.0, max_bad: int | None = None, max_pixels: int | None = MAX_PIXELS,
            allow_manifest_urls: bool = False, workers: int | None = None, size: int | None = None,
            resize_mode: str = "crop", label_key: str = "cls", class_names: str | Path | Iterable[str] | None = None,
            channels: int | None = None, progress: ProgressFn | None = None,
            log: Callable[[dict], None] | None = None, real: RealData | None = None) -> dict:
    """Fills the expert buffer `out` up to `num_experts` complete experts trained on the dataset
    at `urls` (or the already read `real`); returns the buffer report (train.experts).

    `epochs`, `optimizer` (sgd: MTT | ftd: DATM's GSAM), `holdout`, `seed` beat `sets` and the
    `config` file. `test` shards (read with the input's classes) give per-epoch accuracy.
    Several processes may fill one buffer; locks without a heartbeat for `stale_after` seconds
    are broken. The reading keywords: `InputSpec.of`
    (unused when `urls` is an InputSpec).
    """
    from ..train.experts import ExpertConfig, train_experts

    check_limits(num_experts=(num_experts, 1), epochs=(epochs, 1))
    check_seed(seed if seed is not None else 0)
    cfg = resolve_config(ExpertConfig, file=config, sets=list(sets),
                         flags={"epochs": epochs, "optimizer": optimizer, "holdout": holdout, "seed": seed})
    inputs = as_input(urls if real is None else None, max_bad=max_bad, max_pixels=max_pixels,
                          allow_manifest_urls=allow_manifest_urls, workers=workers, size=size,
                          resize_mode=resize_mode, label_key=label_key, class_names=class_names, channels=channels)
    dev = resolve_device(device)
    tests = None
    if real is None:
        inputs.check_output(Path(out))
    note = (lambda text: log({"event": "note", "text": text})) if log else None
    if test:
        tests = InputSpec.of(test, max_bad=max_bad, workers=workers, allow_manifest_urls=allow_manifest_urls,
                             decode=inputs.decode)
        tests.resolved                                   # a bad --test fails before any training
    if real is None:
        real = inputs.read(progress=progress, note=note)
    test_data = tests.with_classes(real.class_names).read(note=note) if tests else None
    report = train_experts(real, out, num_experts=num_experts, config=cfg, test=test_data, device=dev,
                           stale_after=stale_after, progress=progress)
    return {**report, **input_report(real)}
