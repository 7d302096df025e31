"""`dcompress inspect`: manifest summary and a per-class image grid PNG."""
from __future__ import annotations

from pathlib import Path

import torch

from .loader import load
from .types import denormalize_to_u8


def grid_png(out: str | Path, dest: str | Path, *, max_per_class: int = 10, scale: int = 2) -> Path:
    """Writes a grid: one row per class, up to `max_per_class` images per row."""
    from PIL import Image
    from torchvision.utils import make_grid

    ds = load(out)
    rows = []
    c, h, w = ds.images.shape[1:]
    for k in range(len(ds.classes)):
        idx = (ds.labels == k).nonzero().flatten()[:max_per_class]
        imgs = denormalize_to_u8(ds.images[idx], ds.mean, ds.std)
        if imgs.shape[0] < max_per_class:
            imgs = torch.cat([imgs, torch.zeros(max_per_class - imgs.shape[0], c, h, w, dtype=torch.uint8)])
        rows.append(imgs)
    grid = make_grid(torch.cat(rows), nrow=max_per_class, padding=2, pad_value=128)
    if grid.shape[0] == 1:
        grid = grid.expand(3, -1, -1)
    if scale > 1:
        grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy()).save(dest, format="PNG")
    return dest


def summary(out: str | Path) -> dict:
    ds = load(out)
    block = ds.manifest["dcompress"]
    counts = torch.bincount(ds.labels, minlength=len(ds.classes)).tolist()
    return {"method": block["method"]["name"], "ipc": block["method"]["ipc"], "samples": len(ds),
            "shards": len(ds.manifest["shardlist"]), "classes": dict(zip(ds.classes, counts)),
            "image_shape": block["image_shape"], "labels": block["labels"]["kind"], "learned_lr": ds.lr,
            "eval_protocol": block["eval_protocol"], "source_samples": block["source"]["num_samples"],
            "bad_samples": block["bad_samples"]["count"], "bytes": sum(r["filesize"] for r in ds.manifest["shardlist"])}
