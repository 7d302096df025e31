"""`distill --dry-run`: what a run would do, which cache entries it would use or create, and
what it would write, from the decoded input alone."""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from ..cache import cache_root
from ..config import config_dict
from ..core import RealData, RunSpec
from .labels import teacher_plan
from .record import input_report, source_decode
from .request import DistillRequest


def plan(real: RealData, req: DistillRequest) -> dict:
    """The stages of `req` on `real` and the output's bytes on disk by role (api/budget.py's
    estimate: the one `--budget` picks its IPC from), with the budget block under `--budget`."""
    from .budget import output_bytes, sample_bytes, teacher_bytes
    from .distill import size_stage
    from ..io.output import MIN_SHARDS, output_shard_size

    c, h, w = real.image_shape
    ipc, budget = size_stage(req, real)
    info = req.method_class.info
    cache = cache_root()
    spec = RunSpec(ipc=ipc, cache_dir=cache, teacher=req.teacher, teacher_config=req.teacher_config)
    mode = req.labels if req.labels != "auto" else (info.default_labels or ("teacher" if info.kind == "selection" else
                                                     "learned if the method learns labels, else hard"))
    stages = {"read": f"{len(real)} samples decoded", "fit": f"{req.method} ({info.kind})"}
    if info.needs_teacher:
        stages["teacher (features)"] = teacher_plan(real, spec)
    if info.needs_experts:
        stages["experts"] = str(req.experts or f"default buffer under {cache / 'experts'} (trained when missing)")
    stages["labels"] = mode + (f": {teacher_plan(real, spec)}" if mode == "teacher" else "")
    stages["write"] = f"{ipc * real.num_classes} samples ({req.format} images)"
    n_out = ipc * real.num_classes

    k = req.label_topk
    encodings = label_encodings(real, req, n_out)
    roles = sample_bytes(real, req, req.format)
    teacher = teacher_bytes(real, req)
    min_shards = (budget or {}).get("min_shards")
    total = output_bytes(n_out, sum(roles.values()), req.shard_size, teacher, min_shards)
    shards = max(1, math.ceil(n_out / output_shard_size(n_out, req.shard_size, min_shards or MIN_SHARDS)))
    est = {role: n_out * v for role, v in roles.items()}
    est["container"] = total - teacher - sum(est.values())      # the member payloads' share is counted above
    return {"method": req.method, "kind": info.kind, "classes": real.num_classes, "class_names": real.class_names,
            "class_counts": real.class_counts(), "input_samples": len(real), "image_shape": [c, h, w],
            "ipc": ipc, "output_samples": n_out, "shards": shards, "image_format": str(req.format),
            "estimated_output_bytes": total,
            "estimated_bytes": {**est, **({"teacher": teacher} if teacher else {})},
            **({"budget": budget} if budget is not None else {}),
            "label_encodings": encodings,
            **({"label_topk": k} if k else {}), "config": config_dict(req.config),
            "bad_samples": real.source["bad_samples"], "stages": stages, "cache": str(cache), **source_decode(real),
            **input_report(real)}


def label_encodings(real: RealData, req: DistillRequest, n: int) -> dict:
    """The bytes the soft labels of `n` samples cost on disk in each encoding that carries the
    teacher: `teacher` (one vector per image), `views` (E views per image, `views_per_image`),
    `online` (the teacher's weights), and which of the two view encodings is smaller."""
    from .budget import label_bytes, views_per_image, weights_bytes

    out = {"teacher": n * label_bytes(real, req, "teacher"), "views": n * label_bytes(real, req, "views"),
           "online": weights_bytes(real, req), "views_per_image": views_per_image(req)}
    out["smallest_with_views"] = "views" if out["views"] <= out["online"] else "online"
    return out


class _Measured(Exception):
    """Stops the measuring run once its first iteration is timed."""


def measure(real: RealData, req: DistillRequest, device, log, ipc: int) -> dict:
    """`--dry-run`'s time estimate: runs the method's first iteration (in a throwaway folder, no
    checkpoint, nothing kept) and scales it by the iteration count. Only for synthesis methods
    that need nothing trained first (a teacher, a default expert buffer): those say why not."""
    info = req.method_class.info
    if info.kind != "synthesis":
        return {"fit": "not measured: a selection method runs no iterations"}
    if info.needs_teacher or (info.needs_experts and req.experts is None):
        needs = "a teacher" if info.needs_teacher else "an expert buffer (--experts)"
        return {"fit": f"not measured: the first iteration needs {needs} first"}
    seen: dict[str, float] = {}

    def timed(done: int, total: int, desc: str) -> None:
        now = time.perf_counter()
        if "t" not in seen:
            seen["t"] = now
            return
        seen.update(step=now - seen["t"], total=total)
        raise _Measured

    with tempfile.TemporaryDirectory(prefix="dcompress-dry-run-") as work:
        spec = RunSpec(ipc=ipc, device=device, seed=req.seed, work_dir=Path(work),
                       cache_dir=cache_root(), teacher=req.teacher, ratio=req.ratio, experts=req.experts,
                       teacher_config=req.teacher_config, progress=timed, ckpt=None)
        try:
            req.method_class(req.config).fit(real, spec, log=lambda ev: None)
        except _Measured:
            pass
    if "step" not in seen:
        return {"fit": "not measured: the method reported no iterations"}
    step, total = seen["step"], int(seen["total"])
    from ..console import duration

    log({"event": "note", "text": f"iteration 1 took {step:.1f} s: ~{duration(step * total)} for {total}"})
    return {"first_iteration_s": round(step, 2), "iterations": total, "fit_s": round(step * total)}
