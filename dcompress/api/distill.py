"""`distill`: own the output → read the input → fit the method → label → write, one function
per stage over a `DistillRequest` and an `InputSpec`.

Under torchrun rank 0 owns the output (its lock, its checks, the work folder) and the other
ranks follow its decisions; every rank reads, fits and writes its share (api/write.py)."""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

from .. import dist
from ..cache import cache_root
from ..checkpoint import Checkpointer, run_key
from ..core import CompressedSet, RealData, RunSpec, pixel_range
from ..errors import DcompressError, Interrupted
from ..faults import crash_point
from ..io.atomic import OutputLock, check_target, refuse_existing, work_dir_for
from ..io.manifest import read_compressed
from ..io.metrics import METRICS, MetricsLog
from ..io.output import MIN_SHARDS
from ..limits import MAX_PIXELS
from .checks import check_topk, ipc_from, resolve_device
from .inputs import InputSpec, ProgressFn, as_input
from .labels import label_stage
from .plan import measure, plan
from .record import input_report, set_block, source_decode
from .request import DistillRequest
from .write import write_set

LogFn = Callable[[dict], None]


def distill(urls, method: str, *, out: str | Path, ipc: int | None = None, ratio: float | None = None,
            seed: int | None = None, device: str | None = None, config: str | Path | None = None,
            sets: Iterable[str] = (), resume: bool = True, overwrite: bool = False, labels: str | None = None,
            teacher: str | Path | None = None, max_bad: int | None = None, max_pixels: int | None = MAX_PIXELS,
            allow_manifest_urls: bool = False, shard_size: int | None = None, ckpt_every: int | None = None,
            dry_run: bool = False, flags: dict | None = None,
            experts: str | Path | None = None, teacher_sets: Iterable[str] = (), workers: int | None = None,
            progress: ProgressFn | None = None, log: LogFn | None = None,
            real: RealData | None = None, size: int | None = None, resize_mode: str = "crop",
            label_key: str = "cls", class_names: str | Path | Iterable[str] | None = None,
            channels: int | None = None, label_topk: int | None = None, label_views: int | None = None,
            label_sets: Iterable[str] = (), budget: str | None = None, image_format: str = "png",
            sample_json: bool = False, exact_images: bool | None = None) -> dict:
    """Compresses the dataset at `urls` (or the already read `real`) with `method` into `out`;
    returns the run report.

    `label_topk` K stores each sample's K largest logits (`.topk.npy`) instead of all of them
    (docs/format.md); K above the number of classes is a UsageError. `labels="views"` stores
    `label_views` (E) views of every image with the teacher's logits for each, `"online"` ships
    the teacher instead; `label_sets` are ViewConfig keys (augment/views.py).

    `seed` (default 0), `device` ("auto"), `labels` ("auto"), `shard_size` (1000), `ckpt_every`
    (50), `ipc`, `ratio`, `label_topk`, `teacher`, `experts` left None may come from the `config`
    file or `sets` (run options beside the method's keys).

    `budget` (instead of `ipc`/`ratio`): bytes (`50MB`, `1.5GiB`) or a share of the input's bytes
    (`1%`) that the output must fit, the IPC picked from the output's measured bytes
    (api/budget.py). `image_format`: png | jpeg:Q | webp:Q (selections). `sample_json`: also
    write each sample's `.json`. `exact_images=False`: a method that optimises pixels keeps them
    in range while it optimises (RunSpec.pixel_range) and writes its 8-bit PNGs alone, without
    the exact float `.npy` (labels and `evaluate` then see the PNG pixels, what an outside reader
    loads); None: the method's default (MethodInfo.exact_form).

    Every argument is checked before the input is read. `out` must not overlap the input; an
    existing output is replaced only with `overwrite`, except that the same run (same request,
    input content and dcompress version) with `resume` finds it up to date and returns at once.
    `size`, `resize_mode`, `label_key`, `class_names`, `channels`, `max_pixels`, `max_bad`,
    `workers`, `allow_manifest_urls`: how the input is read (`InputSpec.of`; unused when `urls`
    is an InputSpec).
    """
    req = DistillRequest.make(method, config=config, sets=sets, flags=flags, teacher_sets=teacher_sets,
                              teacher=teacher, experts=experts, ipc=ipc, ratio=ratio, seed=seed, device=device,
                              labels=labels, label_topk=label_topk, label_views=label_views, label_sets=label_sets,
                              shard_size=shard_size, ckpt_every=ckpt_every, budget=budget,
                              image_format=image_format, sample_json=sample_json, exact_images=exact_images,
                              resume=resume, overwrite=overwrite)
    inputs = as_input(urls if real is None else None, max_bad=max_bad, max_pixels=max_pixels,
                      allow_manifest_urls=allow_manifest_urls, workers=workers, size=size, resize_mode=resize_mode,
                      label_key=label_key, class_names=class_names, channels=channels)
    return distill_request(req, inputs, out=out, real=real, dry_run=dry_run, progress=progress, log=log)


def distill_request(req: DistillRequest, inputs: InputSpec, *, out: str | Path, real: RealData | None = None,
                    dry_run: bool = False, progress: ProgressFn | None = None, log: LogFn | None = None) -> dict:
    """Runs `req` on `inputs` (or on the already read `real`) into `out`: the stages own output,
    read, fit, label, write. `dry_run` reads the input and returns the plan."""
    dev = resolve_device(req.device)
    out = Path(out).absolute()
    log = log or (lambda ev: None)
    if real is None:
        inputs.check_output(out)
    if dry_run:
        real, t_read = read_stage(inputs, real, progress, log)
        check_topk(req.label_topk, real)
        p = plan(real, req)
        return {"status": "dry-run", "read_s": round(t_read, 2),
                "plan": {**p, "estimate": measure(real, req, dev, log, p["ipc"])}}
    with (OutputLock(out) if dist.is_main() else contextlib.nullcontext()):
        prior = own_output(out, req, dev)
        real, t_read = read_stage(inputs, real, progress, log)
        check_topk(req.label_topk, real)
        ipc, budget = size_stage(req, real)
        if budget is not None:
            log({"event": "note", "text": f"budget {budget['requested']} ({budget['bytes']:,} bytes): IPC {ipc}, "
                                          f"estimated {budget['estimated']:,} bytes"})
        log({"event": "note", "text": f"stage read: {len(real)} samples, {real.num_classes} classes from "
                                      f"{len(real.source['urls'])} shard(s) in {t_read:.1f} s "
                                      f"({real.source['bad_samples']['count']} bad); {_store_note(real)}"})
        identity = req.identity(real, ipc, dev)
        if prior is not None:
            if prior.get("key") != run_key(identity):
                raise refuse_existing(out)
            if dist.is_main():
                shutil.rmtree(work_dir_for(out), ignore_errors=True)
            return {"status": "ok", "up_to_date": True, "out": str(out), "method": req.method, "ipc": ipc,
                    **({"budget": prior["budget"]} if prior.get("budget") else {}),
                    "samples": prior["num_samples"], "shards": prior["shards"], "labels": prior["labels"],
                    "learned_lr": prior["learned_lr"], "bad_samples": real.source["bad_samples"]["count"],
                    "resumed_from": None, "timings": {"read_s": round(t_read, 2)}, **source_decode(real),
                    **input_report(real)}
        ckpt = dist.main_first(lambda: Checkpointer(work_dir_for(out), identity, every=req.ckpt_every,
                                                    resume=req.resume, log=log, quarantine=cache_root() / "quarantine",
                                                    readonly=not dist.is_main()))
        try:
            return _fit_label_write(req, real, out=out, ipc=ipc, budget=budget, dev=dev, ckpt=ckpt, progress=progress,
                                    log=log,
                                    timings={"read_s": round(t_read, 2)},
                                    run={"key": run_key(identity), "request": req.recorded(dev)})
        except BaseException as e:
            if dist.is_main():
                _after_failure(e, ckpt)
            raise


def size_stage(req: DistillRequest, real: RealData) -> tuple[int, dict | None]:
    """The IPC of `req` on `real`: --ipc, --ratio, or the largest that --budget fits
    (api/budget.choose; with its budget block)."""
    if req.budget is None:
        return ipc_from(real, req.ipc, req.ratio), None
    from .budget import choose

    budget = choose(real, req, req.format)
    return budget["ipc"], budget


def encode_stage(req: DistillRequest, fitted: CompressedSet, real: RealData) -> tuple[CompressedSet, list | None]:
    """A lossy `--image-format`: the set's images encoded (the bytes written) and the set with
    the decoded pixels in their place, so that labels, the grid and `evaluate` see what a reader
    of the output loads. `--no-exact-images`: optimised pixels rounded to the 8-bit PNG values
    (clamped to the valid range) and written without `.npy`, for the same reason. (The set
    unchanged and None for png with the exact form.)"""
    fmt = req.format
    if fitted.synthetic and not req.keeps_exact:
        import torch

        from ..io.output import image_bytes

        u8 = torch.from_numpy(image_bytes(fitted, real.mean, real.std))
        return dataclasses.replace(fitted, images=real.normalize(u8), synthetic=False), None
    if not fmt.lossy:
        return fitted, None
    import torch

    from ..io.output import image_bytes

    encoded, u8 = fmt.stored(image_bytes(fitted, real.mean, real.std))
    return dataclasses.replace(fitted, images=real.normalize(torch.from_numpy(u8))), encoded


def own_output(out: Path, req: DistillRequest, dev) -> dict | None:
    """Stage 1, under the output's lock: the prior run recorded in an existing `out` that this
    request may resume or find up to date (None: no output yet, or `overwrite`); refuses an
    existing output otherwise. Rank 0 decides, the other ranks follow."""
    prior = None
    if dist.is_main():
        exists = check_target(out, kind="compressed", overwrite=req.overwrite)
        prior = _prior_run(out) if exists and not req.overwrite else None
        if exists and not req.overwrite and (not req.resume or prior is None
                                             or prior.get("request") != req.recorded(dev)):
            raise refuse_existing(out)
    return dist.broadcast_object(prior)


def read_stage(inputs: InputSpec, real: RealData | None, progress: ProgressFn | None,
               log: LogFn) -> tuple[RealData, float]:
    """Stage 2: the input as RealData (decoded or reopened) and the seconds it took."""
    t0 = time.time()
    if real is None:
        real = inputs.read(progress=progress, note=lambda text: log({"event": "note", "text": text}))
    return real, time.time() - t0


def _fit_label_write(req: DistillRequest, real: RealData, *, out: Path, ipc: int, budget: dict | None, dev,
                     ckpt: Checkpointer,
                     progress: ProgressFn | None, log: LogFn, timings: dict, run: dict) -> dict:
    stages: dict[str, float] = {}
    log = metrics = MetricsLog(ckpt.file(METRICS) if dist.is_main() else None,   # survives a resume
                               forward=_collecting_stages(log, stages))
    spec = RunSpec(ipc=ipc, device=dev, seed=req.seed, work_dir=ckpt.dir, resume=req.resume,
                   ckpt_every=ckpt.every, cache_dir=cache_root(), teacher=req.teacher, ratio=req.ratio,
                   experts=req.experts, teacher_config=req.teacher_config,
                   progress=_announcing_resume(progress, ckpt, log), ckpt=ckpt,
                   pixel_range=pixel_range(real.mean, real.std)
                   if req.method_class.info.exact_form and not req.keeps_exact else None)
    t0 = time.time()
    fitted, encoded = encode_stage(req, fit_stage(req, real, spec, log), real)
    t1 = time.time()
    labelled, teacher_info = labels_stage(req, fitted, real, spec, log)
    t2 = time.time()
    timings = {**timings, "fit_s": round(t1 - t0, 2), "labels_s": round(t2 - t1, 2),
               **{f"{k}_s": round(v, 2) for k, v in stages.items()}}
    block = set_block(req, real, fitted, labelled, ipc=ipc, device=dev.type, teacher_info=teacher_info, run=run,
                      timings=timings, budget=budget) if dist.is_main() else None
    log({"event": "note", "text": f"stage write: {len(fitted)} samples into {out}"})
    manifest = write_set(out, labelled, real, method=req.method, block=block, shard_size=req.shard_size,
                         label_topk=req.label_topk, metrics=metrics.rows() if dist.is_main() else None,
                         encoded=encoded, image_member=req.format.member, sample_json=req.sample_json,
                         min_shards=(budget or {}).get("min_shards", MIN_SHARDS))
    if not dist.is_main():
        dist.barrier()
        return {"status": "ok", "out": str(out), "method": req.method, "rank": dist.rank()}
    crash_point("distill.written")
    ckpt.clear()
    dist.barrier()
    return {"status": "ok", "out": str(out), "method": req.method, "ipc": ipc, "samples": len(fitted),
            "shards": len(manifest["shardlist"]), "labels": labelled.label_kind, "learned_lr": fitted.lr,
            "bad_samples": real.source["bad_samples"]["count"], "resumed_from": ckpt.resumed_from,
            "store": real.source.get("store"), "timings": {**timings, "write_s": round(time.time() - t2, 2)},
            **source_decode(real), "nets": block.method.nets, "bytes": manifest["dcompress"].get("bytes"),
            "label_topk": req.label_topk, "image_format": str(req.format), **input_report(real),
            **({"budget": manifest["dcompress"]["budget"]} if budget is not None else {})}


def fit_stage(req: DistillRequest, real: RealData, spec: RunSpec, log: LogFn) -> CompressedSet:
    """Stage 3: the method's compressed set (checkpointed and resumable through `spec.ckpt`)."""
    log({"event": "note", "text": f"stage fit: {req.method} (IPC {spec.ipc})"})
    return req.method_class(req.config).fit(real, spec, log=log)


def labels_stage(req: DistillRequest, fitted: CompressedSet, real: RealData, spec: RunSpec,
                 log: LogFn) -> tuple[CompressedSet, dict | None]:
    """Stage 4: the set with the labels it is written with (`--labels`), and the teacher's info.
    Under torchrun rank 0's labels are sent to every rank; the others get the teacher beside
    rank 0 (no idle wait) and keep rank 0's logits."""
    labelled, teacher_info = label_stage(fitted, req.labels, req.method_class.info.kind, real, spec, log,
                                         views=req.view_config)
    sent = dist.broadcast_object((labelled.logits, labelled.views, labelled.view_logits) if dist.is_main() else None)
    if dist.is_main():
        return labelled, teacher_info
    logits, views, view_logits = sent
    return dataclasses.replace(labelled, logits=logits, views=views, view_logits=view_logits), None


def _store_note(real: RealData) -> str:
    info = real.source.get("store") or {}
    if info.get("reused"):
        return f"decoded store reused: {info['path']}"
    where = info.get("path") or "a temporary store (remote shards without md5 are not cached)"
    return f"decoded with {info.get('workers')} worker(s) in {info.get('build_s')} s into {where}"


def _prior_run(out: Path) -> dict | None:
    """The `run` record (key + request) of an existing output, with its sample count."""
    try:
        _, rows, block = read_compressed(out)
    except DcompressError:
        return None
    if block.run is None:
        return None
    return {**block.run.to_dict(), "num_samples": block.num_samples, "shards": len(rows),
            "labels": block.labels.kind, "learned_lr": block.learned.lr, "budget": block.budget}


def _after_failure(e: BaseException, ckpt: Checkpointer) -> None:
    """Keeps the work folder when it holds a checkpoint to resume from and says so; else removes
    it, and an interrupt says plainly that nothing was kept."""
    signum = 2 if isinstance(e, KeyboardInterrupt) else e.exit_code - 128 if isinstance(e, Interrupted) else None
    what = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else e.detail if signum else ""
    if not ckpt.holds_state():
        ckpt.clear()
        if signum:
            raise Interrupted(f"{what} before the first checkpoint: nothing was kept, the same command starts "
                              "over", signum=signum) from None
        return
    at = ckpt.saved_at or ckpt.resumed_from
    hint = (f"checkpoint kept in {ckpt.dir}{f' (iteration {at})' if at else ''}: run the same command again to "
            "resume")
    if signum:
        raise Interrupted(f"{what}; {hint}", signum=signum) from None
    e.dcompress_hint = hint


def _collecting_stages(log: LogFn, stages: dict[str, float]) -> LogFn:
    """Forwards `log` events, summing `{"event": "stage"}` times into `stages` (teacher, features:
    they run inside fit or labels and are reported apart) and announcing each as a note."""
    def collect(ev: dict) -> None:
        if ev.get("event") == "stage":
            stages[ev["stage"]] = stages.get(ev["stage"], 0.0) + float(ev.get("seconds", 0.0))
            detail = f" ({ev['source']}: {ev['path']})" if ev.get("source") else ""
            ev = {"event": "note", "text": f"stage {ev['stage']}: {ev.get('seconds')} s{detail}"}
        log(ev)
    return collect


def _announcing_resume(progress: ProgressFn | None, ckpt: Checkpointer, log: LogFn) -> ProgressFn | None:
    """Wraps `progress` so that the first report after a checkpoint load says where the run resumes."""
    if progress is None:
        return None
    said = [False]

    def wrapped(done: int, total: int, desc: str) -> None:
        if not said[0] and ckpt.resumed_from is not None:
            said[0] = True
            log({"event": "note", "text": f"resuming from iteration {ckpt.resumed_from} of {total or '?'} "
                                          f"(checkpoint {ckpt.path})"})
        progress(done, total, desc)
    return wrapped
