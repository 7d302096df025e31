"""The label stage of `distill`: which labels a set is written with (`--labels`), and where a
teacher comes from."""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..core import CompressedSet, RealData, RunSpec
from ..errors import UsageError


def label_stage(cset: CompressedSet, labels: str, kind: str, real: RealData, spec: RunSpec,
                log: Callable[[dict], None], views=None) -> tuple[CompressedSet, dict | None]:
    """The labels a set is written with, as a new CompressedSet (the method's result is not
    changed): `learned` keeps the method's logits, `teacher` uses a teacher's logits (trained or
    loaded, see get_teacher), `hard` one-hot vectors; `auto` = learned when the method learned
    labels, teacher for selections, hard for other synthesis. `views` (E views per image, each
    labelled by the teacher) and `online` (the teacher itself, shipped) use `views`, the run's
    ViewConfig. Returns (set, teacher info | None)."""
    from ..io.output import one_hot_logits

    mode = "views" if labels == "auto" and views is not None else labels   # auto: the method's default
    if mode in ("views", "online"):
        return view_labels(cset, mode, real, spec, log, views)
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


def view_labels(cset: CompressedSet, mode: str, real: RealData, spec: RunSpec, log: Callable[[dict], None],
                config) -> tuple[CompressedSet, dict]:
    """`views`: E views of every image (E = `config.epochs`, else the set's protocol's passes)
    with the teacher's logits for each; `online`: the same views' recipe and the teacher's weights
    (written beside the shards as `teacher.pt` + `teacher.json`) for a loader that labels each
    view as it trains. The set's protocol becomes knowledge distillation at the views'
    temperature."""
    import hashlib
    import io
    import json

    import torch

    from ..io.loader import TEACHER_FILE
    from ..train.relabel import SetViews, label_views
    from ..train.teacher import get_teacher

    epochs = config.epochs or cset.protocol.epochs + 1
    config = dataclasses.replace(config, epochs=epochs)
    log({"event": "note", "text": f"stage labels: {mode} ({epochs} views per image; {teacher_plan(real, spec)})"})
    t = get_teacher(real, spec, log=log)
    protocol = dataclasses.replace(cset.protocol, soft_labels=True, temperature=config.temperature, kd=True,
                                   aug=None)
    info = {**t.info, "views": dataclasses.asdict(config), "view_seed": spec.seed}
    if mode == "views":
        sv = SetViews(cset.images, cset.labels, config, spec.seed)
        recs, logits = label_views(sv, epochs, lambda x: t.logits(x, spec.device), log)
        return dataclasses.replace(cset, label_kind=mode, logits=None, views=recs, view_logits=logits,
                                   protocol=protocol), info
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in t.net.state_dict().items()}, buf)
    weights = buf.getvalue()
    arch = {"model": t.info.get("model"), "arch": getattr(t.net, "arch", None), "image_shape": list(real.image_shape),
            "num_classes": real.num_classes, "class_names": list(real.class_names)}
    info = {**info, "file": TEACHER_FILE, "sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights)}
    extra = {**cset.extra_files, TEACHER_FILE: weights,
             TEACHER_ARCH: (json.dumps(arch, indent=2, sort_keys=True) + "\n").encode()}
    return dataclasses.replace(cset, label_kind=mode, logits=None, extra_files=extra, protocol=protocol), info


TEACHER_ARCH = "teacher.json"        # an `online` output's teacher architecture, for people and other tools
