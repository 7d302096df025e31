"""Pictures of a compressed set, drawn with Pillow only: the class grid and the loss curve.

Both are deterministic (same pixels and rows -> same PNG bytes): Pillow's bundled default
font, no timestamps in the PNG. No matplotlib, no font downloads.
"""
from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from .metrics import iteration_rows

if TYPE_CHECKING:
    from .schema import CompressedBlock

GRID, LOSS = "grid.png", "loss.png"       # the figures' names in an output folder

PAD = 2              # pixels between grid cells
MARGIN = 6           # text margin
MAX_ROWS = 100       # classes drawn in a grid (the title says when there are more)
MAX_LABEL = 24       # characters of a class name
BACKGROUND = (255, 255, 255)
EMPTY = (200, 200, 200)
INK = (20, 20, 20)


def font(size: int = 12):
    """Pillow's bundled font (FreeType build: scalable; otherwise the bitmap fallback)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, ImportError, OSError):
        return ImageFont.load_default()


def text_size(fnt, text: str) -> tuple[int, int]:
    left, top, right, bottom = fnt.getbbox(text)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def cell_scale(h: int, w: int) -> float:
    """Nearest-neighbour x2 for small images (MNIST, CIFAR); large ones shrink to <= 128 px."""
    side = max(h, w)
    if side < 64:
        return float(max(1, 64 // side))
    return min(1.0, 128 / side)


def line_height(fnt) -> int:
    return text_size(fnt, "Hg|")[1]


def grid_title(title: str, num_classes: int) -> str:
    if num_classes > MAX_ROWS:
        return f"{title} (first {MAX_ROWS} of {num_classes} classes)"
    return title


def grid_layout(cols: int, h: int, w: int, names: list[str], title: str, fnt) -> dict:
    """Pixel geometry of `class_grid` (the test checks the image size against it): the
    title band, then one row per class; as wide as the cells or the title, whichever is wider."""
    s = cell_scale(h, w)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    rows = min(len(names), MAX_ROWS)
    label_w = max([text_size(fnt, _short(n))[0] for n in names[:rows]] + [1]) + 2 * MARGIN
    title_h = line_height(fnt) + 2 * MARGIN
    width = max(label_w + cols * (cw + PAD) + PAD, text_size(fnt, grid_title(title, len(names)))[0] + 2 * MARGIN)
    return {"rows": rows, "cols": cols, "cell": (ch, cw), "label_w": label_w, "title_h": title_h,
            "size": (width, title_h + rows * (ch + PAD) + PAD)}


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL else name[:MAX_LABEL - 3] + "..."


def class_grid(images_u8: np.ndarray, labels: np.ndarray, class_names: list[str], title: str, *,
               max_per_class: int = 10):
    """One row per class (its name on the left), up to `max_per_class` images per row.

    Args:
        images_u8: uint8 [N, C, H, W], C = 1 or 3.
        labels: int [N] class of each image.
        class_names: one name per class; the first MAX_ROWS classes are drawn.
        title: drawn above the grid.
    Returns:
        a PIL RGB image of size `grid_layout(...)["size"]`.
    """
    from PIL import Image, ImageDraw

    n, c, h, w = images_u8.shape
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(class_names)) if n else np.zeros(len(class_names), int)
    cols = max(1, min(max_per_class, int(counts.max()) if counts.size else 1))
    fnt = font()
    geo = grid_layout(cols, h, w, class_names, title, fnt)
    ch, cw = geo["cell"]
    title = grid_title(title, len(class_names))
    canvas = Image.new("RGB", geo["size"], BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), title, fill=INK, font=fnt)
    lh = line_height(fnt)
    for k in range(geo["rows"]):
        y = geo["title_h"] + PAD + k * (ch + PAD)
        draw.text((MARGIN, y + max(0, (ch - lh) // 2)), _short(class_names[k]), fill=INK, font=fnt)
        idx = np.flatnonzero(labels == k)[:cols]
        for j in range(cols):
            x = geo["label_w"] + PAD + j * (cw + PAD)
            if j >= len(idx):
                draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=EMPTY)
                continue
            arr = images_u8[idx[j]]
            tile = Image.fromarray(arr[0] if c == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0)))
            if (ch, cw) != (h, w):
                tile = tile.resize((cw, ch), Image.NEAREST if ch > h else Image.BILINEAR)
            canvas.paste(tile.convert("RGB"), (x, y))
    return canvas


def loss_curve(rows: list[dict], title: str, *, size: tuple[int, int] = (640, 400)):
    """Loss against iteration from metrics rows (`iteration` events), or None without any.

    A log-scale y axis when the loss spans more than two decades; a grey line marks resumes.
    """
    from PIL import Image, ImageDraw

    pts = [(r["iteration"], r["loss"]) for r in iteration_rows(rows)]
    if not pts:
        return None
    fnt = font()
    lh = line_height(fnt)
    width, height = size
    left, right, top, bottom = 80, 20, lh + 2 * MARGIN, lh + 3 * MARGIN + lh
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    log_y = lo > 0 and hi / lo > 100
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    y0, y1 = fy(lo), fy(hi)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - max(abs(y0) * 0.1, 1e-3), y1 + max(abs(y1) * 0.1, 1e-3)
    span = y1 - y0
    y0, y1 = y0 - 0.05 * span, y1 + 0.05 * span
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pw, ph = width - left - right, height - top - bottom

    def px(it: float, v: float) -> tuple[float, float]:
        return left + (it - x0) / (x1 - x0) * pw, top + (1 - (fy(v) - y0) / (y1 - y0)) * ph

    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((left, MARGIN), title, fill=INK, font=fnt)
    draw.rectangle([left, top, left + pw, top + ph], outline=INK)
    for i in range(5):
        frac = i / 4
        yv = y0 + frac * (y1 - y0)
        label = f"{10 ** yv if log_y else yv:.4g}"
        yy = top + (1 - frac) * ph
        draw.line([left - 4, yy, left, yy], fill=INK)
        draw.text((left - 6 - text_size(fnt, label)[0], yy - lh / 2), label, fill=INK, font=fnt)
        xv = round(x0 + frac * (x1 - x0))
        xx = left + (xv - x0) / (x1 - x0) * pw
        draw.line([xx, top + ph, xx, top + ph + 4], fill=INK)
        xl = str(xv)
        draw.text((xx - text_size(fnt, xl)[0] / 2, top + ph + MARGIN), xl, fill=INK, font=fnt)
    axis = "iteration" + ("   (log-scale loss)" if log_y else "")
    draw.text((left + pw / 2 - text_size(fnt, axis)[0] / 2, height - lh - MARGIN), axis, fill=INK, font=fnt)
    for r in rows:
        if r.get("event") == "resumed" and "iteration" in r and x0 <= r["iteration"] <= x1:
            xx = px(r["iteration"], pts[0][1])[0]
            draw.line([xx, top, xx, top + ph], fill=(160, 160, 160))
    line = [px(it, v) for it, v in pts]
    if len(line) > 1:
        draw.line(line, fill=(31, 119, 180), width=2)
    if len(line) <= 50:
        for x, y in line:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
    return img


def figure_title(block: CompressedBlock) -> str:
    """`dm, IPC 10, learned labels, 100 images` from a manifest's `dcompress` block."""
    m = block.method
    return f"{m.name}, IPC {m.ipc}, {block.labels.kind} labels, {block.num_samples} images"
