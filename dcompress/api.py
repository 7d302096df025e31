"""The Python API under the CLI: distill, evaluate, plan. No printing here.

Every function returns a JSON-able report dict; errors are `dcompress.errors` exceptions.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from . import __version__, dist
from .checkpoint import Checkpointer, run_key
from .config import config_dict, resolve_config
from .errors import DcompressError, InputDataError, Interrupted, UsageError
from .faults import crash_point
from .io.atomic import OutputLock, check_not_input, check_target, refuse_existing, work_dir_for
from .io.manifest import read_compressed
from .io.schema import (BadSamplesRecord, CompressedBlock, LabelsRecord, LearnedRecord, MethodRecord, Normalization,
                        RunRecord, SourceRecord)
from .io.metrics import METRICS, MetricsLog
from .io.output import one_hot_logits, write_output, write_rank_shards
from .io.decode import DecodeOptions, read_class_names
from .io.reader import read_real
from .io.urls import ResolvedInput, is_remote, resolve_urls
from .io.writer import env_versions
from .limits import MAX_PIXELS
from .registry import create_method, get_method
from .seeds import derive
from .train.teacher import TeacherConfig, get_teacher
from .core import CompressedSet, RealData, RunSpec, default_paths

ProgressFn = Callable[[int, int, str], None]
LABEL_MODES = ("auto", "hard", "teacher", "learned")


def resolve_device(name: str) -> torch.device:
    mine = dist.device(name)             # torchrun: cuda:LOCAL_RANK, not every rank on cuda:0
    if mine is not None:
        return mine
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    if not (name == "cpu" or name.startswith("cuda")):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def check_size(ipc: int | None, ratio: float | None) -> None:
    """UsageError unless exactly one of ipc >= 1 / ratio in (0, 1] is given."""
    if (ipc is None) == (ratio is None):
        raise UsageError("give exactly one of --ipc or --ratio")
    if ratio is not None and not (0 < ratio <= 1):
        raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
    if ipc is not None and ipc < 1:
        raise UsageError(f"--ipc must be >= 1, got {ipc}")


def ipc_from(real: RealData, ipc: int | None, ratio: float | None) -> int:
    """Images per class from --ipc or --ratio (fraction of the input, class-balanced)."""
    check_size(ipc, ratio)
    if ratio is not None:
        return max(1, round(ratio * len(real) / real.num_classes))
    return ipc


def check_seed(seed: int) -> None:
    """UsageError unless 0 <= seed < 2**63 (torch generators take a 64-bit seed)."""
    if not 0 <= seed < 2 ** 63:
        raise UsageError(f"--seed must be in [0, 2**63), got {seed}")


def check_limits(**limits: tuple[int | None, int]) -> None:
    """UsageError naming the option when a value is below its minimum: name=(value, minimum)."""
    for name, (value, low) in limits.items():
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def decode_options(*, max_pixels: int | None = MAX_PIXELS, size: int | None = None, resize_mode: str = "crop",
                   label_key: str = "cls", class_names: str | Path | Iterable[str] | None = None,
                   channels: int | None = None) -> DecodeOptions:
    """The DecodeOptions of the input-reading keywords (UsageError for a bad value). `class_names`
    is a list of names or the path of a class-names file (one name per line; an unreadable or
    malformed file is an InputDataError naming it)."""
    check_limits(max_pixels=(max_pixels, 1))
    if isinstance(class_names, (str, Path)):
        class_names = read_class_names(class_names, error=InputDataError)
    return DecodeOptions(label_key=label_key, max_pixels=max_pixels, size=size, resize_mode=resize_mode,
                         channels=channels, class_names=tuple(class_names) if class_names is not None else None)


def load_real(urls: str | Iterable[str] | ResolvedInput, *, max_bad: int = 100, max_pixels: int | None = MAX_PIXELS,
              allow_manifest_urls: bool = False, workers: int | None = None, progress: ProgressFn | None = None,
              note: Callable[[str], None] | None = None, size: int | None = None, resize_mode: str = "crop",
              label_key: str = "cls", class_names: str | Path | Iterable[str] | None = None,
              channels: int | None = None, decode: DecodeOptions | None = None) -> RealData:
    """The dataset at `urls` (or an already resolved input) as RealData over its decoded store:
    decoded by `workers` processes (default: one per core) on first use, reopened afterwards.

    Decoding: `size`/`resize_mode` (square images of side `size`), `label_key`, `class_names`
    (names or a class-names file), `channels` and `max_pixels` (see `decode_options`); a built
    `decode` replaces them all."""
    check_limits(max_bad=(max_bad, 0), workers=(workers, 1))
    opts = decode or decode_options(max_pixels=max_pixels, size=size, resize_mode=resize_mode, label_key=label_key,
                                    class_names=class_names, channels=channels)
    inp = urls if isinstance(urls, ResolvedInput) else resolve_urls(urls, allow_manifest_urls=allow_manifest_urls)
    return read_real(inp, opts, max_bad=max_bad, workers=workers,
                     progress=(lambda done, total: progress(done, total, "decoding")) if progress else None,
                     note=note)


def plan(real: RealData, method: str, ipc: int, cfg, shard_size: int, *, labels: str = "auto",
         teacher: str | Path | None = None, experts: str | Path | None = None, teacher_cfg=None,
         label_topk: int | None = None) -> dict:
    c, h, w = real.image_shape
    m_cls = get_method(method)
    cache = default_paths()["cache"]
    spec = RunSpec(ipc=ipc, cache_dir=cache, teacher=Path(teacher) if teacher else None, teacher_config=teacher_cfg)
    mode = labels if labels != "auto" else ("teacher" if m_cls.info.kind == "selection" else
                                             "learned if the method learns labels, else hard")
    stages = {"read": f"{len(real)} samples decoded", "fit": f"{method} ({m_cls.info.kind})"}
    if m_cls.info.needs_teacher:
        stages["teacher (features)"] = _teacher_plan(real, spec)
    if m_cls.info.needs_experts:
        stages["experts"] = str(experts or f"default buffer under {cache / 'experts'} "
                                                                  "(trained when missing)")
    stages["labels"] = mode + (f": {_teacher_plan(real, spec)}" if mode == "teacher" else "")
    stages["write"] = f"{ipc * real.num_classes} samples"
    n_out = ipc * real.num_classes
    def member(nbytes: float) -> float:  # tar: 512-byte header + data padded to 512
        return 512 + 512 * math.ceil(nbytes / 512)
    from .io import topk

    # soft labels: float16 logits (.logits.npy), or K (idx, val) records (.topk.npy, io/topk.py)
    label_b = member(128 + (topk.record_dtype(real.num_classes).itemsize * label_topk if label_topk
                            else 2 * real.num_classes))
    image_b = member(0.7 * c * h * w + 70) + (member(128 + 4 * c * h * w) if m_cls.info.kind == "synthesis" else 0)
    per_sample = image_b + label_b + member(2) + member(120)
    return {"method": method, "kind": m_cls.info.kind, "classes": real.num_classes, "class_names": real.class_names,
            "class_counts": real.class_counts(), "input_samples": len(real), "image_shape": [c, h, w],
            "ipc": ipc, "output_samples": n_out, "shards": max(1, math.ceil(n_out / shard_size)),
            "estimated_output_bytes": int(n_out * per_sample + 10240),
            "estimated_bytes": {"images": int(n_out * image_b), "labels": int(n_out * label_b)},
            **({"label_topk": label_topk} if label_topk else {}), "config": config_dict(cfg),
            "bad_samples": real.source["bad_samples"], "stages": stages, "cache": str(cache), **source_decode(real)}


def distill(urls, method: str, *, out: str | Path, ipc: int | None = None, ratio: float | None = None,
            seed: int = 0, device: str = "auto", config: str | Path | None = None, sets: Iterable[str] = (),
            resume: bool = True, overwrite: bool = False, labels: str = "auto", teacher: str | Path | None = None,
            max_bad: int = 100, max_pixels: int | None = MAX_PIXELS, allow_manifest_urls: bool = False,
            shard_size: int = 1000, ckpt_every: int = 50, dry_run: bool = False, flags: dict | None = None,
            experts: str | Path | None = None, teacher_sets: Iterable[str] = (), workers: int | None = None,
            progress: ProgressFn | None = None, log: Callable[[dict], None] | None = None,
            real: RealData | None = None, size: int | None = None, resize_mode: str = "crop",
            label_key: str = "cls", class_names: str | Path | Iterable[str] | None = None,
            channels: int | None = None, label_topk: int | None = None) -> dict:
    """Compresses the dataset at `urls` with `method` into `out`; returns the run report.

    `label_topk` K stores each sample's K largest logits (`.topk.npy`) instead of all of them
    (docs/format.md); K above the number of classes is a UsageError.

    Every argument is checked before the input is read. `out` must not overlap the input; an
    existing output is replaced only with `overwrite`, except that the same run (same request,
    input content and dcompress version) with `resume` finds it up to date and returns at once.
    `size`, `resize_mode`, `label_key`, `class_names`, `channels`, `max_pixels`: how the input is
    decoded (`decode_options`).
    """
    m_cls, cfg = create_method(method, config_file=config, sets=sets, **(flags or {}))
    if experts is not None and "experts" not in m_cls.info.extras:
        raise UsageError(f"--experts does not apply to --method {method} (only to methods that match expert "
                         "trajectories: mtt, datm)")
    teacher_cfg = resolve_config(TeacherConfig, sets=list(teacher_sets))
    teacher_cfg = bn_teacher_default(m_cls, teacher_cfg, teacher_sets)
    if dist.world() > 1 and not getattr(m_cls, "distributed", False):
        raise UsageError(f"--method {method} does not support torchrun yet (WORLD_SIZE={dist.world()}); run it as "
                         "one process")
    check_seed(seed)
    if labels not in LABEL_MODES:
        raise UsageError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    check_size(ipc, ratio)
    check_limits(shard_size=(shard_size, 1), ckpt_every=(ckpt_every, 0), max_bad=(max_bad, 0),
                 max_pixels=(max_pixels, 1), workers=(workers, 1), label_topk=(label_topk, 1))
    opts = decode_options(max_pixels=max_pixels, size=size, resize_mode=resize_mode, label_key=label_key,
                          class_names=class_names, channels=channels)
    dev = resolve_device(device)
    out = Path(out).absolute()
    inp = None
    if real is None:
        inp = resolve_urls(urls, allow_manifest_urls=allow_manifest_urls)
        check_not_input(out, [u for u in inp.urls if not is_remote(u)], inp.folders)
    if dry_run:
        t0 = time.time()
        real = real or load_real(inp, max_bad=max_bad, decode=opts, workers=workers, progress=progress,
                                 note=(lambda text: log({"event": "note", "text": text})) if log else None)
        return {"status": "dry-run", "read_s": round(time.time() - t0, 2),
                "plan": plan(real, method, ipc_from(real, ipc, ratio), cfg, shard_size, labels=labels, teacher=teacher,
                             experts=experts, teacher_cfg=teacher_cfg, label_topk=check_topk(label_topk, real))}
    request = {"method": method, "config": config_dict(cfg), "ipc": ipc, "ratio": ratio, "seed": seed,
               "device": dev.type, "labels": labels, "experts": str(experts) if experts else None,
               "teacher_config": config_dict(teacher_cfg),
               "teacher": str(teacher) if teacher else None, "version": __version__,
               **({"label_topk": label_topk} if label_topk is not None else {})}
    with _main_only(OutputLock, out):      # torchrun: rank 0 owns the output; the others follow its checks
        exists = prior = None
        if dist.is_main():
            exists = check_target(out, kind="compressed", overwrite=overwrite)
            prior = _prior_run(out) if exists and not overwrite else None
            if exists and not overwrite and (not resume or prior is None or prior.get("request") != request):
                raise refuse_existing(out)
        exists, prior = dist.broadcast_object((exists, prior))
        t0 = time.time()
        if real is None:
            real = load_real(inp, max_bad=max_bad, decode=opts, workers=workers, progress=progress,
                             note=(lambda text: log({"event": "note", "text": text})) if log else None)
        n_ipc = ipc_from(real, ipc, ratio)
        check_topk(label_topk, real)
        t_read = time.time() - t0
        if log is not None:
            log({"event": "note", "text": f"stage read: {len(real)} samples, {real.num_classes} classes from "
                                          f"{len(real.source['urls'])} shard(s) in {t_read:.1f} s "
                                          f"({real.source['bad_samples']['count']} bad); {_store_note(real)}"})
        identity = {"method": method, "config": config_dict(cfg), "ipc": n_ipc, "seed": seed, "device": dev.type,
                    "fingerprint": real.source["fingerprint"], "labels": labels, "class_names": real.class_names,
                    "experts": str(experts) if experts else None, "teacher_config": config_dict(teacher_cfg),
                    **({"label_topk": label_topk} if label_topk is not None else {})}
        if prior is not None:
            if prior.get("key") != run_key(identity):
                raise refuse_existing(out)
            if dist.is_main():
                shutil.rmtree(work_dir_for(out), ignore_errors=True)
            return {"status": "ok", "up_to_date": True, "out": str(out), "method": method, "ipc": n_ipc,
                    "samples": prior["num_samples"], "shards": prior["shards"], "labels": prior["labels"],
                    "learned_lr": prior["learned_lr"], "bad_samples": real.source["bad_samples"]["count"],
                    "resumed_from": None, "timings": {"read_s": round(t_read, 2)}, **source_decode(real)}
        ckpt = _main_first(lambda: Checkpointer(work_dir_for(out), identity, every=ckpt_every, resume=resume,
                                                log=log, quarantine=default_paths()["cache"] / "quarantine",
                                                readonly=not dist.is_main()))
        try:
            return _fit_and_write(real, m_cls, cfg, method, out=out, n_ipc=n_ipc, ratio=ratio, seed=seed, dev=dev,
                                  resume=resume, labels=labels, teacher=teacher, shard_size=shard_size,
                                  ckpt=ckpt, experts=experts, teacher_cfg=teacher_cfg, progress=progress, log=log,
                                  t_read=t_read, label_topk=label_topk,
                                  run={"key": run_key(identity), "request": request})
        except BaseException as e:
            if dist.is_main():
                _after_failure(e, ckpt)
            raise


def _store_note(real: RealData) -> str:
    info = real.source.get("store") or {}
    if info.get("reused"):
        return f"decoded store reused: {info['path']}"
    where = info.get("path") or "a temporary store (remote shards without md5 are not cached)"
    return f"decoded with {info.get('workers')} worker(s) in {info.get('build_s')} s into {where}"


def _main_only(context, *args):
    """`context(*args)` on rank 0 (or in one process), a no-op context on the other ranks."""
    import contextlib

    return context(*args) if dist.is_main() else contextlib.nullcontext()


def _main_first(make):
    """`make()` on rank 0, then (after a barrier) on the other ranks: rank 0 prepares shared
    files (the work folder) before the others look at them."""
    made = make() if dist.is_main() else None
    dist.barrier()
    return made if made is not None else make()


def bn_teacher_default(m_cls, teacher_cfg: TeacherConfig, teacher_sets: Iterable[str]) -> TeacherConfig:
    """For a method that needs a BatchNorm teacher (sre2l), the default teacher network becomes its
    BatchNorm variant (convnet_w32 -> convnetbn_w32); a network the user named is kept (and
    refused by the method when it has no BatchNorm)."""
    from .config import parse_sets
    from .train.teacher_out import bn_variant

    if not m_cls.info.needs_bn_teacher or "model" in parse_sets(list(teacher_sets)):
        return teacher_cfg
    return dataclasses.replace(teacher_cfg, model=bn_variant(teacher_cfg.model))


def check_topk(label_topk: int | None, real: RealData) -> int | None:
    """`label_topk`; UsageError when it asks for more logits than the input has classes."""
    if label_topk is not None and label_topk > real.num_classes:
        raise UsageError(f"--label-topk {label_topk} exceeds the input's {real.num_classes} classes "
                         f"(use at most {real.num_classes}, or omit it to store every logit)", key="label_topk")
    return label_topk


def _prior_run(out: Path) -> dict | None:
    """The `run` record (key + request) of an existing output, with its sample count."""
    try:
        _, rows, block = read_compressed(out)
    except DcompressError:
        return None
    if block.run is None:
        return None
    return {**block.run.to_dict(), "num_samples": block.num_samples, "shards": len(rows),
            "labels": block.labels.kind, "learned_lr": block.learned.lr}


def _after_failure(e: BaseException, ckpt: Checkpointer) -> None:
    """Keeps the work folder when it holds a checkpoint worth resuming (and says so), else removes it."""
    kept = ckpt.dir.is_dir() and any(p.name != "run.json" for p in ckpt.dir.iterdir())
    if not kept:
        ckpt.clear()
        return
    hint = f"checkpoint kept in {ckpt.dir}: run the same command again to resume"
    if isinstance(e, KeyboardInterrupt):
        raise Interrupted(f"interrupted; {hint}", signum=2) from None
    if isinstance(e, Interrupted):
        raise Interrupted(f"{e.detail}; {hint}", signum=e.exit_code - 128) from None
    e.dcompress_hint = hint


def _collecting_stages(log, stages: dict[str, float]):
    """Forwards `log` events, summing `{"event": "stage"}` times into `stages` (teacher, features:
    they run inside fit or labels and are reported apart) and announcing each as a note."""
    def collect(ev: dict) -> None:
        if ev.get("event") == "stage":
            stages[ev["stage"]] = stages.get(ev["stage"], 0.0) + float(ev.get("seconds", 0.0))
            detail = f" ({ev['source']}: {ev['path']})" if ev.get("source") else ""
            ev = {"event": "note", "text": f"stage {ev['stage']}: {ev.get('seconds')} s{detail}"}
        if log is not None:
            log(ev)
    return collect


def _announcing_resume(progress: ProgressFn | None, ckpt: Checkpointer, log) -> ProgressFn | None:
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


def label_stage(cset: CompressedSet, labels: str, kind: str, real: RealData, spec: RunSpec,
                log) -> tuple[CompressedSet, dict | None]:
    """The labels a set is written with, as a new CompressedSet (the method's result is not
    changed): `learned` keeps the method's logits, `teacher` uses a teacher's logits (trained or
    loaded, see get_teacher), `hard` one-hot vectors; `auto` = learned when the method learned
    labels, teacher for selections, hard for other synthesis. Returns (set, teacher info | None)."""
    mode = labels
    if mode in ("auto", "teacher") and cset.label_kind == "teacher" and cset.logits is not None:
        return cset, cset.info.get("teacher")      # relabelled by the method's own teacher (rded, sre2l)
    if mode == "auto":
        mode = "learned" if cset.logits is not None else ("teacher" if kind == "selection" else "hard")
    if mode == "learned":
        if cset.logits is None or cset.label_kind == "teacher":
            raise UsageError("--labels learned: this method does not learn labels")
        return dataclasses.replace(cset, label_kind=mode), None
    if mode == "teacher":
        log({"event": "note", "text": f"stage labels: teacher soft labels ({_teacher_plan(real, spec)})"})
        t = get_teacher(real, spec, log=log)
        return dataclasses.replace(cset, logits=t.logits(cset.images, spec.device), label_kind=mode), t.info
    return dataclasses.replace(cset, logits=one_hot_logits(cset.labels, real.num_classes), label_kind=mode), None


def _teacher_plan(real: RealData, spec: RunSpec) -> str:
    """Where the teacher comes from: the user's file, the cache, or a training run (cached)."""
    from .train.teacher import teacher_cache_path

    if spec.teacher is not None:
        return f"--teacher {spec.teacher}"
    path = teacher_cache_path(real, spec.teacher_config or TeacherConfig(), spec.cache_dir)
    return f"cached {path}" if path.is_file() else f"not cached yet: trained on the input, then cached as {path}"


def _fit_and_write(real: RealData, m_cls, cfg, method: str, *, out: Path, n_ipc: int, ratio, seed: int, dev,
                   resume: bool, labels: str, teacher, shard_size: int, ckpt: Checkpointer, experts, teacher_cfg,
                   progress,
                   log, t_read: float, run: dict, label_topk: int | None = None) -> dict:
    stages: dict[str, float] = {}
    log = metrics = MetricsLog(ckpt.file(METRICS) if dist.is_main() else None,   # survives a resume
                               forward=_collecting_stages(log, stages))
    progress = _announcing_resume(progress, ckpt, log)
    spec = RunSpec(ipc=n_ipc, device=dev, seed=seed, work_dir=ckpt.dir, resume=resume, ckpt_every=ckpt.every,
                   cache_dir=default_paths()["cache"], teacher=Path(teacher) if teacher else None,
                   ratio=ratio, experts=Path(experts) if experts else None, teacher_config=teacher_cfg,
                   progress=progress, ckpt=ckpt)
    generator = derive(seed, "fit")          # for methods drawing outside the loop (selections)
    log({"event": "note", "text": f"stage fit: {method} (IPC {n_ipc})"})
    t1 = time.time()
    cset = m_cls(cfg).fit(real, spec, generator=generator, log=log)
    t_fit = time.time() - t1
    if not dist.is_main():         # torchrun: rank 0's labels are written; every rank writes shards
        label_stage(cset, labels, m_cls.info.kind, real, spec, log)   # gets the teacher beside rank 0, no idle wait
        labelled = dataclasses.replace(cset, logits=dist.broadcast_object(None))
        write_rank_shards(labelled, mean=real.mean, std=real.std, method=method, class_names=real.class_names,
                          shard_size=shard_size, label_topk=label_topk)
        dist.barrier()
        return {"status": "ok", "out": str(out), "method": method, "rank": dist.rank()}
    t_labels = time.time()
    labelled, teacher_info = label_stage(cset, labels, m_cls.info.kind, real, spec, log)
    dist.broadcast_object(labelled.logits)
    t_labels = time.time() - t_labels
    mode = labelled.label_kind
    protocol = dataclasses.replace(cset.protocol, soft_labels=mode != "hard")
    nets = resolved_nets(real, cfg, protocol, teacher_info)
    log({"event": "note", "text": f"stage write: {len(cset)} samples into {out}"})
    t2 = time.time()
    timings = {"read_s": round(t_read, 2), "fit_s": round(t_fit, 2), "labels_s": round(t_labels, 2),
               **{f"{k}_s": round(v, 2) for k, v in stages.items()}}
    block = CompressedBlock(
        version=__version__,
        method=MethodRecord(name=method, kind=m_cls.info.kind, ipc=n_ipc, ratio=ratio, seed=seed, device=dev.type,
                            config=config_dict(cfg), experts=str(experts) if experts else None,
                            teacher_config=config_dict(teacher_cfg), nets=nets),
        source=SourceRecord(**{k: real.source[k] for k in ("urls", "num_samples", "fingerprint", "class_counts")},
                            store=(real.source.get("store") or {}).get("path"), **source_decode(real)),
        bad_samples=BadSamplesRecord(**real.source["bad_samples"]),
        class_names=tuple(real.class_names),
        labels=LabelsRecord(kind=mode, teacher=teacher_info),
        normalization=Normalization(mean=tuple(real.mean), std=tuple(real.std)),
        image_shape=tuple(real.image_shape),
        exact_tensor="npy" if cset.synthetic else None,
        learned=LearnedRecord(lr=cset.lr, lrs=cset.lrs),
        eval_protocol=protocol, info=cset.info, run=RunRecord(**run), env=env_versions(), timings=timings)
    manifest = write_output(out, labelled, class_names=real.class_names, mean=real.mean, std=real.std,
                            method=method, block=block, shard_size=shard_size, metrics=metrics.rows(),
                            label_topk=label_topk)
    crash_point("distill.written")
    ckpt.clear()
    dist.barrier()
    return {"status": "ok", "out": str(out), "method": method, "ipc": n_ipc, "samples": len(cset),
            "shards": len(manifest["shardlist"]), "labels": mode, "learned_lr": cset.lr,
            "bad_samples": real.source["bad_samples"]["count"], "resumed_from": ckpt.resumed_from,
            "store": real.source.get("store"),
            "timings": {**timings, "write_s": round(time.time() - t2, 2)}, **source_decode(real), "nets": nets,
            "bytes": manifest["dcompress"].get("bytes"), "label_topk": label_topk}


def source_decode(real: RealData) -> dict:
    """`decode` (the DecodeOptions, class names left to `class_names`) and `class_source` of
    the input, for the manifest's `source` block and the report (empty for data read otherwise)."""
    decode = real.source.get("decode")
    rec = {"decode": {k: v for k, v in decode.items() if k != "class_names"}} if decode else {}
    if real.source.get("class_source"):
        rec["class_source"] = real.source["class_source"]
    return rec


def resolved_nets(real: RealData, cfg, protocol, teacher_info: dict | None) -> dict:
    """The networks of a run by role, resolved for the image size (`nets.arch_name`): `model` (the
    method's `model` config), `eval` (the evaluation protocol's), `teacher` (when one labelled)."""
    from .nets import arch_name

    size = real.image_shape[1:]
    out = {}
    if isinstance(getattr(cfg, "model", None), str):
        out["model"] = arch_name(cfg.model, size)
    if protocol.model:
        out["eval"] = arch_name(protocol.model, size)
    if teacher_info and isinstance(teacher_info.get("model"), str):
        out["teacher"] = teacher_info.get("arch") or arch_name(teacher_info["model"], size)
    return out


def teacher(urls, *, out: str | Path, model: str | None = "auto", bn: bool = False, epochs: int | None = None,
            seed: int | None = None, sets: Iterable[str] = (), config: str | Path | None = None,
            device: str = "auto", overwrite: bool = False, max_bad: int = 100, max_pixels: int | None = MAX_PIXELS,
            allow_manifest_urls: bool = False, workers: int | None = None, progress: ProgressFn | None = None,
            log: Callable[[dict], None] | None = None, real: RealData | None = None, size: int | None = None,
            resize_mode: str = "crop", label_key: str = "cls", class_names: str | Path | Iterable[str] | None = None,
            channels: int | None = None) -> dict:
    """Trains a teacher on the dataset at `urls` and writes `out` (a `.pt` state dict) plus its
    `.json` sidecar, for `--teacher out` of any teacher-using command (docs/teacher.md).

    The network: `model` (a name from `dcompress.nets`), else `--set model=...`, else by
    resolution (`auto`: ConvNet-3 w32 up to 64 px a side, ResNet-18 above); `bn` picks the
    BatchNorm variant (SRe2L needs one). The teacher is trained once per input and config and
    cached (the same cache `distill` uses), so a rerun, or a distill with the same teacher
    config, reuses it. An existing `out` is replaced only with `overwrite`, unless it already
    holds this very teacher (reported `up_to_date`).
    """
    from .config import load_yaml, parse_sets
    from .train import teacher_out as tout

    out = Path(out).absolute()
    tout.check_out(out)
    check_limits(epochs=(epochs, 1), max_bad=(max_bad, 0), max_pixels=(max_pixels, 1))
    check_seed(seed if seed is not None else 0)
    explicit = model not in (None, "auto")
    cfg = resolve_config(TeacherConfig, file=config, sets=list(sets),
                         flags={"epochs": epochs, "seed": seed, "model": model if explicit else None})
    set_model = explicit or "model" in parse_sets(list(sets)) or (config is not None and "model" in load_yaml(config))
    dev = resolve_device(device)
    inp = None
    if real is None:
        inp = resolve_urls(urls, allow_manifest_urls=allow_manifest_urls)
        check_not_input(out, [u for u in inp.urls if not is_remote(u)], inp.folders)
    with _main_only(OutputLock, out, "teacher"):   # torchrun: rank 0 owns the output; every rank trains
        t0 = time.time()
        if real is None:
            real = load_real(inp, max_bad=max_bad, workers=workers, progress=progress,
                             decode=decode_options(max_pixels=max_pixels, size=size, resize_mode=resize_mode,
                                                   label_key=label_key, class_names=class_names, channels=channels),
                             note=(lambda text: log({"event": "note", "text": text})) if log else None)
        t_read = time.time() - t0
        name = cfg.model if set_model else tout.auto_model(real.image_shape, bn)
        cfg = dataclasses.replace(cfg, model=tout.bn_variant(name) if bn else name)
        spec = RunSpec(ipc=1, device=dev, seed=cfg.seed, cache_dir=default_paths()["cache"], teacher_config=cfg,
                       progress=progress)
        rep = tout.train_teacher(real, cfg, out, spec=spec, overwrite=overwrite, log=log)
    teacher_s = rep.pop("teacher_s", 0.0)
    return {"status": "ok", "out": str(out), "sidecar": str(tout.sidecar_path(out)), **rep,
            "config": config_dict(cfg), "image_shape": list(real.image_shape), "classes": real.num_classes,
            "input_samples": len(real), "timings": {"read_s": round(t_read, 2), "teacher_s": teacher_s}}
