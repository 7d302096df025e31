"""Random: a class-balanced uniform sample of real images (the baseline every table needs)."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import MethodInfo, register_method
from ..config import Validated
from ..core import CompressedSet, LogFn, RealData, RunSpec
from ..seeds import derive
from .base import check_ipc, selection_result


@register_method
class Random:
    info = MethodInfo("random", "selection", "class-balanced uniform sample of real images")

    @dataclass(frozen=True)
    class Config(Validated):
        pass

    def __init__(self, config: "Random.Config"):
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        check_ipc(real, spec.ipc)
        g = derive(spec.seed, "fit")            # one stream, classes in order
        picks = [real.sample_class(c, spec.ipc, g) for c in range(real.num_classes)]
        return selection_result(real, picks)
