"""`dcompress inspect`: manifest summary, the class grid and the loss curve.

`distill` already writes `grid.png` (and `loss.png` with a loss curve) into its output;
`inspect` redraws them from the shards and `metrics.jsonl`, by default into the output
folder itself: the same bytes for an output of this version (nothing is rewritten then),
new files for older outputs. Each file is replaced atomically (temp + rename); shards and
manifest are never touched, so `verify` is unaffected. `--grid PATH` writes elsewhere.

Torch-free: the grid is drawn from the `.png` members (the 8-bit form of every image, exact
`.npy` tensors included), the counts from `.cls`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputDataError
from .io.figures import GRID, LOSS, class_grid, figure_title, loss_curve, png_bytes
from .io.members import output_samples, read_sample
from .io.metrics import METRICS, read_metrics
from .io.safe_write import ensure_dir, write_bytes
from .io.schema import CompressedBlock


def _folder(out: str | Path) -> Path:
    """The output folder, given it or its manifest.json."""
    out = Path(out)
    return out if out.is_dir() else out.parent


def _write_atomic(dest: Path, data: bytes) -> Path:
    if dest.is_file() and dest.read_bytes() == data:
        return dest
    ensure_dir(dest.parent)
    return write_bytes(dest, data, fsync=False)


@dataclass(frozen=True)
class Pixels:
    """An output's 8-bit images [N, C, H, W], class indices [N] and manifest."""

    manifest: dict
    block: CompressedBlock
    u8: np.ndarray
    labels: np.ndarray


def read_pixels(out: str | Path) -> Pixels:
    """The `.png` pixels and `.cls` classes of output `out`, every shard checked against the
    manifest and every sample validated (`io.members.read_sample`); InputDataError naming shard
    and key for a missing or invalid member."""
    _, manifest, block, samples = output_samples(out)
    u8, labels = [], []
    for s in samples:
        a = read_sample(s, block, member=True)
        u8.append(a.image)
        labels.append(a.label)
    if not u8:
        raise InputDataError("output has no samples", path=str(out))
    return Pixels(manifest=manifest, block=block, u8=np.stack(u8), labels=np.array(labels, dtype=np.int64))


def grid_png(out: str | Path, dest: str | Path | None = None, *, max_per_class: int = 10,
             pixels: Pixels | None = None) -> Path:
    """Writes the class grid of output `out` (default `out/grid.png`): one row per class,
    its name on the left, up to `max_per_class` images, a title with method, IPC and labels."""
    px = pixels or read_pixels(out)
    img = class_grid(px.u8, px.labels, list(px.block.class_names), figure_title(px.block),
                     max_per_class=max_per_class)
    return _write_atomic(Path(dest) if dest is not None else _folder(out) / GRID, png_bytes(img))


def loss_png(out: str | Path, dest: str | Path | None = None) -> Path | None:
    """Writes the loss curve from `out/metrics.jsonl` (default `out/loss.png`); None when the
    output has no iteration losses (selection methods, outputs older than metrics.jsonl)."""
    from .io.manifest import read_compressed

    rows = read_metrics(_folder(out) / METRICS)
    _, _, block = read_compressed(out)
    img = loss_curve(rows, f"{figure_title(block)}: loss")
    if img is None:
        return None
    return _write_atomic(Path(dest) if dest is not None else _folder(out) / LOSS, png_bytes(img))


def figures(out: str | Path, grid: str | Path | None = None, *, pixels: Pixels | None = None) -> dict:
    """Grid and loss curve: into `out` by default; with `grid`, the curve goes beside it as
    `<grid stem>-loss.png`. Returns their paths (loss_curve None without a curve)."""
    loss_dest = Path(grid).with_name(f"{Path(grid).stem}-loss.png") if grid is not None else None
    curve = loss_png(out, loss_dest)
    return {"grid": str(grid_png(out, grid, pixels=pixels)), "loss_curve": str(curve) if curve else None}


def summary(out: str | Path, *, pixels: Pixels | None = None) -> dict:
    """What `inspect` prints: method, size, classes with their counts, labels, protocol, bytes,
    the last logged loss."""
    px = pixels or read_pixels(out)
    block, manifest = px.block, px.manifest
    counts = np.bincount(px.labels, minlength=len(block.class_names)).tolist()
    rows = read_metrics(_folder(out) / METRICS)
    last = next((r for r in reversed(rows) if r.get("event") == "iteration" and r.get("loss") is not None), None)
    m, src, bad = block.method, block.source, block.bad_samples   # None in a manifest that lacks them
    return {"method": m and m.name, "ipc": m and m.ipc, "samples": len(px.labels),
            "shards": len(manifest["shardlist"]), "classes": dict(zip(block.class_names, counts)),
            "image_shape": list(block.image_shape), "labels": block.labels.kind, "learned_lr": block.learned.lr,
            "eval_protocol": dataclasses.asdict(block.eval_protocol), "source_samples": src and src.num_samples,
            "bad_samples": bad and bad.count, "bytes": sum(r["filesize"] for r in manifest["shardlist"]),
            "final_loss": last["loss"] if last else None, "iterations_logged": last["iteration"] if last else None}


def inspect(out: str | Path, grid: str | Path | None = None) -> dict:
    """`dcompress inspect`: the summary, and the figures (re)drawn; the output is read once."""
    px = read_pixels(out)
    return {**summary(out, pixels=px), **figures(out, grid, pixels=px)}
