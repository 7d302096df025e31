"""`teacher`: train a teacher on an input and write it (+ sidecar) for `--teacher`."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterable

from .. import dist
from ..cache import cache_root
from ..config import config_dict, load_yaml, parse_sets, resolve_config
from ..core import RealData, RunSpec
from ..io.atomic import OutputLock
from ..limits import MAX_PIXELS
from .checks import check_limits, check_seed, resolve_device
from .inputs import ProgressFn, as_input
from .record import input_report


def teacher(urls, *, out: str | Path, model: str | None = "auto", bn: bool = False, epochs: int | None = None,
            seed: int | None = None, sets: Iterable[str] = (), config: str | Path | None = None,
            device: str = "auto", overwrite: bool = False, max_bad: int | None = None,
            max_pixels: int | None = MAX_PIXELS,
            allow_manifest_urls: bool = False, workers: int | None = None, progress: ProgressFn | None = None,
            log: Callable[[dict], None] | None = None, real: RealData | None = None, size: int | None = None,
            resize_mode: str = "crop", label_key: str = "cls", class_names: str | Path | Iterable[str] | None = None,
            channels: int | None = None) -> dict:
    """Trains a teacher on the dataset at `urls` (or the already read `real`) and writes `out`
    (a `.pt` state dict) plus its `.json` sidecar, for `--teacher out` of any teacher-using
    command (docs/teacher.md).

    The network: `model` (a name from `dcompress.nets`), else `--set model=...`, else by
    resolution (`auto`: ConvNet-3 w32 up to 64 px a side, ResNet-18 above); `bn` picks the
    BatchNorm variant (SRe2L needs one). The teacher is trained once per input and config and
    cached (the same cache `distill` uses), so a rerun, or a distill with the same teacher
    config, reuses it. An existing `out` is replaced only with `overwrite`, unless it already
    holds this very teacher (reported `up_to_date`). The reading keywords: `InputSpec.of`
    (unused when `urls` is an InputSpec).
    """
    from ..train import teacher_out as tout
    from ..train.teacher import TeacherConfig

    out = Path(out).absolute()
    tout.check_out(out)
    check_limits(epochs=(epochs, 1))
    check_seed(seed if seed is not None else 0)
    inputs = as_input(urls if real is None else None, max_bad=max_bad, max_pixels=max_pixels,
                          allow_manifest_urls=allow_manifest_urls, workers=workers, size=size,
                          resize_mode=resize_mode, label_key=label_key, class_names=class_names, channels=channels)
    explicit = model not in (None, "auto")
    cfg = resolve_config(TeacherConfig, file=config, sets=list(sets),
                         flags={"epochs": epochs, "seed": seed, "model": model if explicit else None})
    set_model = explicit or "model" in parse_sets(list(sets)) or (config is not None and "model" in load_yaml(config))
    dev = resolve_device(device)
    if real is None:
        inputs.check_output(out)
    with (OutputLock(out, "teacher") if dist.is_main() else contextlib.nullcontext()):  # every rank trains
        t0 = time.time()
        if real is None:
            real = inputs.read(progress=progress, note=(lambda text: log({"event": "note", "text": text}))
                               if log else None)
        t_read = time.time() - t0
        name = cfg.model if set_model else tout.auto_model(real.image_shape, bn)
        cfg = dataclasses.replace(cfg, model=tout.bn_variant(name) if bn else name)
        spec = RunSpec(ipc=1, device=dev, seed=cfg.seed, cache_dir=cache_root(), teacher_config=cfg,
                       progress=progress)
        rep = tout.train_teacher(real, cfg, out, spec=spec, overwrite=overwrite, log=log)
    teacher_s = rep.pop("teacher_s", 0.0)
    return {"status": "ok", "out": str(out), "sidecar": str(tout.sidecar_path(out)), **rep,
            "config": config_dict(cfg), "image_shape": list(real.image_shape), "classes": real.num_classes,
            "input_samples": len(real), "timings": {"read_s": round(t_read, 2), "teacher_s": teacher_s},
            **input_report(real)}
