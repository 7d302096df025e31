"""What an outside reader trains on, next to what `evaluate` trains on.

A synthesis output stores every image twice: the exact float tensor (`.npy`), which
`dcompress.load` and `evaluate` use, and an 8-bit image member (`.png`: de-normalised, rounded,
clamped to [0, 1]), which webdataset, wids, timm and Hugging Face decode. Optimised pixels leave
[0, 1] and fall between the 256 levels, so the two can be different training sets. `evaluate`
therefore also trains the set's side on the image member (`load(..., images="member")`) with the
same recipe, lr, inits and seeds, and reports it as `outside_reader`; a set without an exact form
(selections, outputs without `.npy`) is already evaluated on what an outside reader loads.

`random_pixels` is the other half of "the same bytes": random subsets of a set stored as
`jpeg:Q` / `webp:Q` go through the same encoding before training.
"""
from __future__ import annotations

import torch

from ..core import RealData, normalize
from ..io.loader import CompressedDataset, load


def member_form(ds: CompressedDataset) -> tuple[CompressedDataset | None, dict]:
    """(the set as an outside reader loads it, or None when that is what `ds` holds already or
    it is the same tensor, and the report's `outside_reader` block without accuracies):
    `images` (the member an outside reader decodes), `same_as_evaluated`, and for a set with an
    exact form `differs_from_exact`, `pixels_out_of_range` (fraction of the exact tensor's
    values, in pixel units, outside [0, 1]) and `max_abs_diff` (largest |exact − member| in
    pixel units, 1.0 = the full range)."""
    if ds.image_source != "npy":
        return None, {"images": ds.image_member, "same_as_evaluated": True}
    member = load(ds.manifest_path, images="member")
    block = {"images": member.image_source, "same_as_evaluated": False, **pixel_gap(ds, member)}
    if not block["differs_from_exact"]:
        block["same_as_evaluated"] = True
        return None, block
    return member, block


def pixel_gap(exact: CompressedDataset, member: CompressedDataset) -> dict:
    """`differs_from_exact` (the normalised tensors are not identical), `pixels_out_of_range`
    and `max_abs_diff` (pixel units) between a set's exact tensors and its image member."""
    def pixels(ds):
        m = torch.tensor(ds.mean).view(1, -1, 1, 1)
        s = torch.tensor(ds.std).view(1, -1, 1, 1)
        return ds.images.double() * s + m
    px, pm = pixels(exact), pixels(member)
    return {"differs_from_exact": not torch.equal(exact.images, member.images),
            "pixels_out_of_range": round(float(((px < 0) | (px > 1)).double().mean()), 6),
            "max_abs_diff": round(float((px - pm).abs().max()), 6)}


def with_accuracies(block: dict, summary: dict, exact_mean: float) -> dict:
    """The `outside_reader` block with the member form's `summary` (`mean`, `std`, `runs` in %)
    and `delta_vs_exact` (its mean minus the exact form's, points)."""
    return {**block, **summary, "delta_vs_exact": round(summary["mean"] - exact_mean, 2)}


def skipped(block: dict) -> dict:
    """The block of a set whose member form was not trained (`--no-outside-reader`)."""
    return {**block, "trained": False} if not block["same_as_evaluated"] else block


def random_pixels(ds: CompressedDataset, train: RealData, idx: torch.Tensor) -> torch.Tensor:
    """Training samples `idx` as the random side trains on them: stored the way the set stores
    its images (a lossy `image_format` encodes and decodes them at the same quality; png is
    lossless, the pixels as decoded), normalised with the set's mean/std. float32 [N, C, H, W]."""
    u8 = train.get_u8(idx)
    if ds.image_format.lossy:
        u8 = torch.from_numpy(ds.image_format.roundtrip(u8.numpy()))
    return normalize(u8, ds.mean, ds.std)


def line(block: dict | None) -> str | None:
    """The terminal's outside-reader line of an `outside_reader` block (None without one)."""
    if not block:
        return None
    what = f"outside reader (.{block['images']}: webdataset, wids, timm, HF)"
    if "mean" in block:
        return (f"{what}: {block['mean']:.2f} ± {block['std']:.2f} % ({block['delta_vs_exact']:+.2f} vs the exact "
                f".npy; {100 * block['pixels_out_of_range']:.2f} % of pixels outside [0, 1], max |diff| "
                f"{block['max_abs_diff']:.3f})")
    if block["same_as_evaluated"]:
        return f"{what}: loads what was evaluated"
    return (f"{what}: not trained (--no-outside-reader); differs from the exact .npy: "
            f"{100 * block['pixels_out_of_range']:.2f} % of pixels outside [0, 1], max |diff| "
            f"{block['max_abs_diff']:.3f}")
