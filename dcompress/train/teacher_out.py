"""`dcompress teacher URLS -o T.pt`: train (or reuse from the cache) a teacher and write it as a
file pair any teacher-using command loads with `--teacher T.pt`.

No pretrained weights can be downloaded, so every teacher is trained here, on the input. The
pair is `T.pt` (a state dict, read back with `weights_only=True`) and `T.json` (the sidecar:
model name, TeacherConfig, the input's image shape, classes and fingerprint, training accuracy,
and `weights_sha256` of `T.pt`). Each file is written by temp + fsync + rename, the sidecar
first; the digest ties the two together, so a reader that meets the new sidecar beside an old
or damaged `.pt` refuses it (exit 4) instead of loading a mismatched pair.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from ..core import RealData, RunSpec
from ..errors import InputDataError, OutputError, UsageError
from ..io.safe_write import ensure_dir, remove_dead_temps, write_bytes, write_json
from .. import dist
from .teacher import Teacher, TeacherConfig, get_teacher

SMALL_SIDE = 64     # up to this many pixels a side: ConvNet-3; above: ResNet-18 (see auto_model)


def auto_model(image_shape: tuple[int, int, int], bn: bool) -> str:
    """The teacher network for an input resolution: ConvNet-3 at width 32 (`convnetbn_w32` with
    BatchNorm, as SRe2L needs) up to 64 px a side, ResNet-18 (BatchNorm) above."""
    if max(image_shape[1:]) > SMALL_SIDE:
        return "resnet18"
    return "convnetbn_w32" if bn else TeacherConfig.model


def bn_variant(model: str) -> str:
    """The BatchNorm variant of a ConvNet name (`convnet_w32` -> `convnetbn_w32`); ResNet-18 is
    BatchNorm already; UsageError for networks without one."""
    name = model.strip().lower()
    if name.startswith("convnetbn") or name == "resnet18":
        return name
    if name.startswith("convnet"):
        tokens = [t for t in name.removeprefix("convnet").split("_") if t and t not in ("in", "nn", "ln", "gn")]
        return "_".join(["convnetbn", *tokens])
    raise UsageError(f"--bn: network {model!r} has no BatchNorm variant (use a convnet* name or resnet18)",
                     key="model")


def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json")


def check_out(out: Path) -> None:
    """UsageError unless `out` names a `.pt` file; OutputError when it or its sidecar is a folder."""
    if out.suffix != ".pt":
        raise UsageError("-o must name the teacher's .pt file (its .json sidecar is written beside it)",
                         path=str(out))
    for p in (out, sidecar_path(out)):
        if p.exists() and not p.is_file():
            raise OutputError("teacher output path exists and is not a file", path=str(p))


def existing_sidecar(out: Path) -> dict | None:
    """The sidecar of an existing teacher at `out` (None when neither file exists)."""
    side = sidecar_path(out)
    if not out.exists() and not side.exists():
        return None
    try:
        meta = json.loads(side.read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def up_to_date(out: Path, meta: dict | None, real: RealData, cfg: TeacherConfig) -> bool:
    """True when `out` already holds the teacher this request would write (same input content and
    config, and a .pt matching the recorded digest)."""
    if not meta or meta.get("input_fingerprint") != real.source.get("fingerprint"):
        return False
    if meta.get("config") != dataclasses.asdict(cfg) or not out.is_file():
        return False
    try:
        return hashlib.sha256(out.read_bytes()).hexdigest() == meta.get("weights_sha256")
    except OSError:
        return False


def write_teacher(out: Path, teacher: Teacher, real: RealData) -> dict:
    """Writes the teacher's state dict (its cache file's bytes) to `out` and the sidecar beside
    it; returns the sidecar."""
    src = teacher.info.get("path")
    try:
        data = Path(src).read_bytes()
    except (OSError, TypeError) as e:
        raise InputDataError(f"cannot read the trained teacher ({e})", path=str(src)) from None
    keep = ("model", "config", "train_samples", "train_accuracy", "val_samples", "val_accuracy", "train_seconds")
    meta = {**{k: teacher.info[k] for k in keep if k in teacher.info},
            "input_fingerprint": real.source.get("fingerprint"), "image_shape": list(real.image_shape),
            "num_classes": real.num_classes, "class_names": list(real.class_names),
            "weights_sha256": hashlib.sha256(data).hexdigest(), "weights_bytes": len(data)}
    ensure_dir(out.parent)
    remove_dead_temps(out.parent, f"{out.name}.tmp-*")
    remove_dead_temps(out.parent, f"{sidecar_path(out).name}.tmp-*")
    write_json(sidecar_path(out), meta)          # sidecar first; the digest rejects a stale .pt
    write_bytes(out, data)
    return meta


def train_teacher(real: RealData, cfg: TeacherConfig, out: Path, *, spec: RunSpec, overwrite: bool,
                  log=None) -> dict:
    """Trains (or takes from the cache) the teacher `cfg` on `real` and writes it to `out`.
    The caller holds the output lock and has checked `out` (check_out)."""
    verdict = None                      # torchrun: rank 0 checks `out`, every rank trains, rank 0 writes
    if dist.is_main():
        meta = existing_sidecar(out)
        if meta is not None and not overwrite:
            verdict = "existing" if up_to_date(out, meta, real, cfg) else "refuse"
    verdict, meta = dist.broadcast_object((verdict, meta if verdict else None))
    if verdict == "existing":
        return {"up_to_date": True, "source": "existing", **_summary(meta)}
    if verdict == "refuse":
        raise UsageError(f"{out} already exists; pass --overwrite to replace it", path=str(out))
    t0 = time.time()
    teacher = get_teacher(real, spec, cfg, log=log)
    t_teacher = time.time() - t0
    meta = dist.broadcast_object(write_teacher(out, teacher, real) if dist.is_main() else None)
    return {"up_to_date": False, "source": teacher.info.get("source"), "cache": teacher.info.get("path"),
            "teacher_s": round(t_teacher, 2), **_summary(meta)}


def _summary(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("model", "train_accuracy", "val_accuracy", "train_samples", "train_seconds",
                                     "weights_bytes", "weights_sha256")}
