"""What a run records: the manifest's `dcompress` block of a written set, and the parts of it
that reports repeat (how the input was decoded, the networks by role)."""
from __future__ import annotations

import dataclasses

from .. import __version__
from ..config import config_dict
from ..core import CompressedSet, RealData
from ..io.schema import (BadSamplesRecord, CompressedBlock, LabelsRecord, LearnedRecord, MethodRecord, Normalization,
                         RunRecord, SourceRecord)
from ..io.writer import env_versions
from .request import DistillRequest


def source_decode(real: RealData) -> dict:
    """`decode` (the DecodeOptions, class names left to `class_names`) and `class_source` of
    the input, for the manifest's `source` block and the report (empty for data read otherwise)."""
    decode = real.source.get("decode")
    rec = {"decode": {k: v for k, v in decode.items() if k != "class_names"}} if decode else {}
    if real.source.get("class_source"):
        rec["class_source"] = real.source["class_source"]
    return rec


def input_report(real: RealData) -> dict:
    """`input`: the reading's accounting for a report (samples expected, read and used, bad
    samples by cause, damaged shards skipped; io.reader.read_real), empty for data read
    otherwise."""
    acct = real.source.get("input")
    return {"input": acct} if acct else {}


def resolved_nets(real: RealData, cfg, protocol, teacher_info: dict | None) -> dict:
    """The networks of a run by role, resolved for the image size (`nets.arch_name`): `model` (the
    method's `model` config), `eval` (the evaluation protocol's), `teacher` (when one labelled)."""
    from ..nets import arch_name

    size = real.image_shape[1:]
    out = {}
    if isinstance(getattr(cfg, "model", None), str):
        out["model"] = arch_name(cfg.model, size)
    if protocol.model:
        out["eval"] = arch_name(protocol.model, size)
    if teacher_info and isinstance(teacher_info.get("model"), str):
        out["teacher"] = teacher_info.get("arch") or arch_name(teacher_info["model"], size)
    return out


def set_block(req: DistillRequest, real: RealData, fitted: CompressedSet, labelled: CompressedSet, *, ipc: int,
              device: str, teacher_info: dict | None, run: dict, timings: dict,
              budget: dict | None = None) -> CompressedBlock:
    """The manifest block of `labelled` (the method's result `fitted` with its written labels);
    `budget`: the `--budget` block (api/budget.choose; achieved and fits are added when written)."""
    kind = req.method_class.info.kind
    protocol = dataclasses.replace(labelled.protocol, soft_labels=labelled.label_kind != "hard")
    return CompressedBlock(
        version=__version__,
        method=MethodRecord(name=req.method, kind=kind, ipc=ipc, ratio=req.ratio, seed=req.seed, device=device,
                            config=config_dict(req.config), experts=str(req.experts) if req.experts else None,
                            teacher_config=config_dict(req.teacher_config),
                            nets=resolved_nets(real, req.config, protocol, teacher_info)),
        source=SourceRecord(**{k: real.source[k] for k in ("urls", "num_samples", "fingerprint", "class_counts")},
                            store=(real.source.get("store") or {}).get("path"), **source_decode(real),
                            **{k: v for k, v in (real.source.get("input") or {}).items()
                               if k in ("shards", "samples_expected", "samples_read", "damaged_shards")}),
        bad_samples=BadSamplesRecord(**real.source["bad_samples"]),
        class_names=tuple(real.class_names),
        labels=labels_record(req, labelled, teacher_info),
        normalization=Normalization(mean=tuple(real.mean), std=tuple(real.std)),
        image_shape=tuple(real.image_shape),
        exact_tensor="npy" if fitted.synthetic else None,
        learned=LearnedRecord(lr=fitted.lr, lrs=fitted.lrs),
        eval_protocol=protocol, info=fitted.info, run=RunRecord(**run), env=env_versions(), timings=timings,
        image_format=str(req.format), budget=budget)


def labels_record(req: DistillRequest, labelled: CompressedSet, teacher_info: dict | None) -> LabelsRecord:
    """Where a written set's labels are and what they are (the manifest's `labels`)."""
    from ..io import topk, viewlabels

    kind, k = labelled.label_kind, req.label_topk
    if kind == "hard":                       # `.cls` alone: a one-hot vector would carry nothing more
        return LabelsRecord(kind=kind, teacher=teacher_info, soft=None)
    if kind not in ("views", "online"):
        return LabelsRecord(kind=kind, teacher=teacher_info, soft="logits.npy" if k is None else topk.MEMBER, topk=k)
    info = dict(teacher_info or {})
    config = info.pop("views")
    views = {"epochs": config["epochs"], "seed": info.pop("view_seed"), "config": config}
    return LabelsRecord(kind=kind, teacher=info, soft=viewlabels.MEMBER if kind == "views" else None, topk=k,
                        temperature=labelled.protocol.temperature, views=views, format=viewlabels.FORMAT)
