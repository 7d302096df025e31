"""`dcompress inspect`: manifest summary, the class grid and the loss curve.

`distill` already writes `grid.png` (and `loss.png` with a loss curve) into its output;
`inspect` redraws them from the shards and `metrics.jsonl`, by default into the output
folder itself: the same bytes for an output of this version (nothing is rewritten then),
new files for older outputs. Each file is replaced atomically (temp + rename); shards and
manifest are never touched, so `verify` is unaffected. `--grid PATH` writes elsewhere.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .io.figures import class_grid, loss_curve, png_bytes
from .io.metrics import METRICS, read_metrics
from .io.output import GRID, LOSS, figure_title
from .io.safe_write import ensure_dir, write_bytes
from .io.loader import load
from .core import denormalize_to_u8


def _folder(out: str | Path) -> Path:
    """The output folder, given it or its manifest.json."""
    out = Path(out)
    return out if out.is_dir() else out.parent


def _write_atomic(dest: Path, data: bytes) -> Path:
    if dest.is_file() and dest.read_bytes() == data:
        return dest
    ensure_dir(dest.parent)
    return write_bytes(dest, data, fsync=False)


def grid_png(out: str | Path, dest: str | Path | None = None, *, max_per_class: int = 10) -> Path:
    """Writes the class grid of output `out` (default `out/grid.png`): one row per class,
    its name on the left, up to `max_per_class` images, a title with method, IPC and labels."""
    ds = load(out)
    block = ds.block
    u8 = denormalize_to_u8(ds.images, ds.mean, ds.std).numpy()
    img = class_grid(u8, ds.labels.numpy(), ds.classes, figure_title(block), max_per_class=max_per_class)
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


def figures(out: str | Path, grid: str | Path | None = None) -> dict:
    """Grid and loss curve: into `out` by default; with `grid`, the curve goes beside it as
    `<grid stem>-loss.png`. Returns their paths (loss_curve None without a curve)."""
    loss_dest = Path(grid).with_name(f"{Path(grid).stem}-loss.png") if grid is not None else None
    curve = loss_png(out, loss_dest)
    return {"grid": str(grid_png(out, grid)), "loss_curve": str(curve) if curve else None}


def summary(out: str | Path) -> dict:
    ds = load(out)
    block = ds.block
    counts = torch.bincount(ds.labels, minlength=len(ds.classes)).tolist()
    rows = read_metrics(_folder(out) / METRICS)
    last = next((r for r in reversed(rows) if r.get("event") == "iteration" and r.get("loss") is not None), None)
    m, src, bad = block.method, block.source, block.bad_samples   # None in a manifest that lacks them
    return {"method": m and m.name, "ipc": m and m.ipc, "samples": len(ds),
            "shards": len(ds.manifest["shardlist"]), "classes": dict(zip(ds.classes, counts)),
            "image_shape": list(block.image_shape), "labels": block.labels.kind, "learned_lr": ds.lr,
            "eval_protocol": dataclasses.asdict(block.eval_protocol), "source_samples": src and src.num_samples,
            "bad_samples": bad and bad.count, "bytes": sum(r["filesize"] for r in ds.manifest["shardlist"]),
            "final_loss": last["loss"] if last else None, "iterations_logged": last["iteration"] if last else None}
