"""`DistillRequest`: everything a `distill` run was asked for, resolved and checked before any
input is read, and the two records made from it: `recorded` (what the user asked, kept in the
manifest; a rerun that asks the same resumes) and `identity` (what decides the output's bytes,
the checkpoints' key)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .. import __version__
from ..config import _coerce, config_dict, load_yaml, parse_sets, resolve_config
from ..errors import UsageError
from ..registry import create_method
from .checks import check_limits, check_seed, check_size

if TYPE_CHECKING:
    import torch

    from ..core import RealData

LABEL_MODES = ("auto", "hard", "teacher", "learned", "views", "online")
VIEW_MODES = ("views", "online")

# Run options a `--config` file (or `--set`) may hold beside the method's keys, with their types;
# an explicit flag (a keyword that is not None) wins over `--set`, which wins over the file.
RUN_KEYS: dict[str, Any] = {"ipc": int, "ratio": float, "seed": int, "device": str, "labels": str,
                            "label_topk": int, "shard_size": int, "ckpt_every": int, "teacher": str,
                            "experts": str}


def run_options(config: str | Path | None, sets: Iterable[str], given: dict) -> dict:
    """The run options of `given` (keywords; None = not given), filled from `--set` then the
    `--config` file: explicit > `--set` > file > the request's defaults."""
    layers = [(str(config), load_yaml(config))] if config is not None else []
    layers.append(("--set", parse_sets(list(sets))))
    found: dict[str, Any] = {}
    for origin, layer in layers:
        for k, v in layer.items():
            if k in RUN_KEYS:
                found[k] = None if v is None else _coerce(k, v, RUN_KEYS[k], origin)
    return {**found, **{k: v for k, v in given.items() if v is not None}}


@dataclass(frozen=True)
class DistillRequest:
    """One `distill` run: the method with its resolved Config, the size (`ipc` or `ratio`), the
    labels and where they come from, and how the output is written. Build it with `make`."""

    method: str
    config: Any                           # the method's frozen Config
    teacher_config: Any                   # train.teacher.TeacherConfig of a teacher trained here
    ipc: int | None = None
    ratio: float | None = None
    seed: int = 0
    device: str = "auto"
    labels: str = "auto"
    teacher: Path | None = None           # a user's teacher file
    experts: Path | None = None           # a user's expert buffer (mtt, datm)
    label_topk: int | None = None
    view_config: Any = None               # augment.views.ViewConfig of `views` / `online` labels
    shard_size: int = 1000
    budget: str | None = None             # `--budget`: bytes or a share of the input (api/budget.py) picks the ipc
    image_format: str = "png"             # png | jpeg:Q | webp:Q (io/imageformat.py; selections only)
    sample_json: bool = False             # also the per-sample `.json` member
    exact_images: bool | None = None      # write the exact `.npy` (None: the method's MethodInfo.exact_form)
    ckpt_every: int = 50
    resume: bool = True
    overwrite: bool = False

    @classmethod
    def make(cls, method: str, *, config: str | Path | None = None, sets: Iterable[str] = (),
             flags: dict | None = None, teacher_sets: Iterable[str] = (), teacher: str | Path | None = None,
             experts: str | Path | None = None, label_views: int | None = None, label_sets: Iterable[str] = (),
             **fields) -> DistillRequest:
        """The request of `distill`'s keywords, every value checked (UsageError naming the option).
        The method's Config: explicit `flags` > `sets` > the `config` file > defaults;
        `teacher_sets` configure a teacher trained here (a BatchNorm one for sre2l). `label_views`
        (E) and `label_sets` (ViewConfig keys) configure `views` / `online` labels."""
        from ..augment.views import ViewConfig
        from ..train.teacher import TeacherConfig

        run = run_options(config, sets, {"teacher": teacher, "experts": experts,
                                         **{k: fields.pop(k) for k in list(fields) if k in RUN_KEYS}})
        teacher, experts = run.pop("teacher", None), run.pop("experts", None)
        fields.update({k: v for k, v in run.items() if v is not None})
        m_cls, cfg = create_method(method, config_file=config, sets=sets, other_keys=tuple(RUN_KEYS),
                                   **(flags or {}))
        if experts is not None and "experts" not in m_cls.info.extras:
            raise UsageError(f"--experts does not apply to --method {method} (only to methods that match expert "
                             "trajectories: mtt, datm)")
        teacher_cfg = resolve_config(TeacherConfig, sets=list(teacher_sets))
        if m_cls.info.needs_bn_teacher and "model" not in parse_sets(list(teacher_sets)):
            from ..train.teacher_out import bn_variant

            teacher_cfg = dataclasses.replace(teacher_cfg, model=bn_variant(teacher_cfg.model))
        view_config = None
        if label_views is not None or list(label_sets):
            if fields.get("labels") not in VIEW_MODES and not (fields.get("labels", "auto") == "auto"
                                                                and m_cls.info.default_labels in VIEW_MODES):
                raise UsageError("--label-views and --label-set apply to --labels views or online only")
            check_limits(label_views=(label_views, 1))
        if fields.get("labels") in VIEW_MODES or (fields.get("labels", "auto") == "auto"
                                                   and m_cls.info.default_labels in VIEW_MODES):
            view_config = resolve_config(ViewConfig, sets=list(label_sets), flags={"epochs": label_views})
        req = cls(method=method, config=cfg, teacher_config=teacher_cfg, teacher=Path(teacher) if teacher else None,
                  experts=Path(experts) if experts else None, view_config=view_config, **fields)
        req.check()
        return req

    def check(self) -> None:
        """UsageError for a value out of range (what `make` checks; also for a request built directly)."""
        from .. import dist

        if dist.world() > 1 and not self.method_class.info.distributed:
            raise UsageError(f"--method {self.method} does not support torchrun yet (WORLD_SIZE={dist.world()}); "
                             "run it as one process")
        check_seed(self.seed)
        if self.labels not in LABEL_MODES:
            raise UsageError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {self.labels!r}")
        if self.budget is not None:
            from .budget import parse_budget

            if self.ipc is not None or self.ratio is not None:
                raise UsageError("--budget picks the IPC: give exactly one of --ipc, --ratio or --budget")
            parse_budget(self.budget)
        else:
            check_size(self.ipc, self.ratio)
        fmt = self.format
        if fmt.lossy and self.method_class.info.kind != "selection":
            raise UsageError(f"--image-format {fmt} applies to selection methods only: {self.method} synthesises "
                             "images, whose exact form is kept (png + the float .npy)")
        if self.exact_images and not self.method_class.info.exact_form:
            raise UsageError(f"--exact-images: {self.method} writes 8-bit pixels, which have no other exact form "
                             "(methods that optimise pixels: dm, dc, dsa, mtt, datm, dd, sre2l)")
        check_limits(shard_size=(self.shard_size, 1), ckpt_every=(self.ckpt_every, 0),
                     label_topk=(self.label_topk, 1))

    @property
    def format(self):
        """The output's io.imageformat.ImageFormat."""
        from ..io.imageformat import ImageFormat

        return ImageFormat.parse(self.image_format)

    @property
    def keeps_exact(self) -> bool:
        """Whether the output carries each image's exact float tensor (`.npy`) beside its PNG:
        the method optimises pixels (MethodInfo.exact_form) and `--no-exact-images` was not given."""
        return bool(self.method_class.info.exact_form and self.exact_images is not False)

    @property
    def method_class(self) -> type:
        from ..registry import get_method

        return get_method(self.method)

    def recorded(self, device: torch.device) -> dict:
        """What was asked, as the manifest's `run.request`: an existing output with the same
        request (and identity) is up to date, or resumes."""
        return {"method": self.method, "config": config_dict(self.config), "ipc": self.ipc, "ratio": self.ratio,
                "seed": self.seed, "device": device.type, "labels": self.labels,
                "experts": str(self.experts) if self.experts else None,
                "teacher_config": config_dict(self.teacher_config),
                "teacher": str(self.teacher) if self.teacher else None, "version": __version__,
                **self._topk()}

    def identity(self, real: RealData, ipc: int, device: torch.device) -> dict:
        """What decides the output's bytes for this input (`checkpoint.run_key` of it names the
        checkpoints and the manifest's `run.key`)."""
        return {"method": self.method, "config": config_dict(self.config), "ipc": ipc, "seed": self.seed,
                "device": device.type, "fingerprint": real.source["fingerprint"], "labels": self.labels,
                "class_names": real.class_names, "experts": str(self.experts) if self.experts else None,
                "teacher_config": config_dict(self.teacher_config), **self._topk()}

    def _topk(self) -> dict:
        """The label options that only some runs have (absent otherwise, so that the records of
        other runs stay as they were)."""
        return {**({"label_topk": self.label_topk} if self.label_topk is not None else {}),
                **({"views": config_dict(self.view_config)} if self.view_config is not None else {}),
                **({"budget": self.budget} if self.budget is not None else {}),
                **({"image_format": str(self.format)} if self.format.lossy else {}),
                **({"sample_json": True} if self.sample_json else {}),
                **({"exact_images": False} if (self.exact_images is False and self.method_class.info.exact_form)
                   else {})}
