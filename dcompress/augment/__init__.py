"""Data augmentation. `dsa`: Differentiable Siamese Augmentation (parameters drawn apart from
their application, so one draw can transform several batches identically)."""
from __future__ import annotations

from .dsa import (DEFAULT_STRATEGY, DIGIT_STRATEGY, AugOp, AugParams, DSAConfig, apply, augment, make_params,
                  parse_strategy)

__all__ = ["DEFAULT_STRATEGY", "DIGIT_STRATEGY", "AugOp", "AugParams", "DSAConfig", "apply", "augment",
           "make_params", "parse_strategy"]
