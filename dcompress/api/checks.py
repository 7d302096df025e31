"""Argument checks every command shares, done before any input is read (UsageError, exit 2),
and the device a run uses."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

    from ..core import RealData


def check_limits(**limits: tuple[int | None, int]) -> None:
    """UsageError naming the option when a value is below its minimum: name=(value, minimum)."""
    for name, (value, low) in limits.items():
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def check_seed(seed: int) -> None:
    """UsageError unless 0 <= seed < 2**63 (torch generators take a 64-bit seed)."""
    if not 0 <= seed < 2 ** 63:
        raise UsageError(f"--seed must be in [0, 2**63), got {seed}")


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


def check_topk(label_topk: int | None, real: RealData) -> int | None:
    """`label_topk`; UsageError when it asks for more logits than the input has classes."""
    if label_topk is not None and label_topk > real.num_classes:
        raise UsageError(f"--label-topk {label_topk} exceeds the input's {real.num_classes} classes "
                         f"(use at most {real.num_classes}, or omit it to store every logit)", key="label_topk")
    return label_topk


def resolve_device(name: str) -> torch.device:
    """`auto | cpu | cuda[:N]` as a torch.device; under torchrun each rank's own GPU."""
    import torch

    from .. import dist

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
