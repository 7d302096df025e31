"""The label stage of `distill`: which labels a set is written with (`--labels`), and where a
teacher comes from."""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..core import CompressedSet, RealData, RunSpec
from ..errors import UsageError


def label_stage(cset: CompressedSet, labels: str, kind: str, real: RealData, spec: RunSpec,
                log: Callable[[dict], None]) -> tuple[CompressedSet, dict | None]:
    """The labels a set is written with, as a new CompressedSet (the method's result is not
    changed): `learned` keeps the method's logits, `teacher` uses a teacher's logits (trained or
    loaded, see get_teacher), `hard` one-hot vectors; `auto` = learned when the method learned
    labels, teacher for selections, hard for other synthesis. Returns (set, teacher info | None)."""
    from ..io.output import one_hot_logits

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
        from ..train.teacher import get_teacher

        log({"event": "note", "text": f"stage labels: teacher soft labels ({teacher_plan(real, spec)})"})
        t = get_teacher(real, spec, log=log)
        return dataclasses.replace(cset, logits=t.logits(cset.images, spec.device), label_kind=mode), t.info
    return dataclasses.replace(cset, logits=one_hot_logits(cset.labels, real.num_classes), label_kind=mode), None


def teacher_plan(real: RealData, spec: RunSpec) -> str:
    """Where the teacher comes from: the user's file, the cache, or a training run (cached)."""
    from ..train.teacher import TeacherConfig, teacher_cache_path

    if spec.teacher is not None:
        return f"--teacher {spec.teacher}"
    path = teacher_cache_path(real, spec.teacher_config or TeacherConfig(), spec.cache_dir)
    return f"cached {path}" if path.is_file() else f"not cached yet: trained on the input, then cached as {path}"
