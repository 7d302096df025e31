"""The files of a frontier report other than frontier.json: the CSV, the Markdown summary and
the accuracy-vs-bytes plot (Pillow only, deterministic bytes, like io/figures.py). Pure
functions of the frontier.json report (api/frontier.py); no torch."""
from __future__ import annotations

import csv
import io
import math

from .figures import BACKGROUND, INK, font, line_height, png_bytes, text_size

COLUMNS = ("method", "labels", "budget", "budget_bytes", "bytes", "fits", "ipc", "samples", "accuracy_mean",
           "accuracy_std", "accuracy_runs", "outside_reader_mean", "outside_reader_std", "random_mean", "random_std", "random_runs", "gain", "ior_mean",
           "ior_std", "lr", "random_lr", "distill_s", "compressed_s", "random_s", "full_data_s", "total_s",
           "status", "error")
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (188, 189, 34)]
RANDOM_INK = (120, 120, 120)


def reader_accuracy(p: dict) -> dict | None:
    """The accuracy (`mean`, `std` in %) of what an outside reader loads from point `p`: its
    image member's when that differs from the exact `.npy` evaluated, else the point's own;
    None for a point of a report written before outside readers were measured."""
    o = p.get("outside_reader")
    if not o:
        return None
    return o if "mean" in o else p["accuracy"] if o.get("same_as_evaluated") else None


def _row(p: dict) -> dict:
    if p.get("status") != "ok":
        return {"method": p["method"], "labels": p["labels"], "budget": p["budget"], "status": p["status"],
                "error": p.get("error", "")}
    a, r, s, o = p["accuracy"], p["random"], p["seconds"], reader_accuracy(p) or {}
    return {"method": p["method"], "labels": p["labels"], "budget": p["budget"], "budget_bytes": p["budget_bytes"],
            "bytes": p["bytes"], "fits": p["fits"], "ipc": p["ipc"], "samples": p["samples"],
            "accuracy_mean": a["mean"], "accuracy_std": a["std"], "accuracy_runs": " ".join(map(str, a["runs"])),
            "outside_reader_mean": o.get("mean", ""), "outside_reader_std": o.get("std", ""),
            "random_mean": r["mean"], "random_std": r["std"], "random_runs": " ".join(map(str, r["runs"])),
            "gain": p["gain"], "ior_mean": p["ior"]["mean"], "ior_std": p["ior"]["std"], "lr": p["lr"],
            "random_lr": r["lr"], "distill_s": s["distill"], "compressed_s": s["compressed"], "random_s": s["random"],
            "full_data_s": s["full_data"], "total_s": s["total"], "status": "ok", "error": ""}


def csv_text(report: dict) -> str:
    """One row per point (accuracies in %, bytes on disk, seconds per stage)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for p in report["points"]:
        w.writerow(_row(p))
    return buf.getvalue()


def human(n: float | None) -> str:
    """Bytes as a data engineer writes them: 51.2 kB, 3.4 MB (decimal units, as budgets)."""
    if n is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def _pm(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def markdown(report: dict) -> str:
    """The summary: settings, the table, the best choice per budget, where random is as good."""
    s, inp = report["settings"], report["input"]
    ok = [p for p in report["points"] if p["status"] == "ok"]
    epochs = f", {s['epochs']} epochs" if s["epochs"] else ""
    lines = [f"# Accuracy vs bytes: {', '.join(s['methods'])} × {', '.join(s['labels'])} labels", "",
             f"Input {inp['samples']:,} samples, {inp['classes']} classes (fingerprint `{inp['fingerprint']}`); "
             f"test {report['test']['samples']:,} samples. Fair protocol: {s['runs']} runs per point, lr from "
             f"{', '.join(f'{v:g}' for v in s['lr_grid'])} on {s['val_per_class']} validation images per class"
             f"{' (successive halving)' if s.get('lr_search') == 'halving' else ''}{epochs}"
             f", seed {s['seed']}. Accuracies in %, mean ± std over runs; random: class-matched random real "
             "subsets of the same size, trained with the same recipe and labels.", "",
             f"Status: **{report['status']}**" + (f" — {report['error']}" if report.get("error") else ""), "",
             "| budget | method | labels | bytes | IPC | accuracy % | random % | gain | IOR | seconds |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in report["points"]:
        if p["status"] != "ok":
            lines.append(f"| {p['budget']} | {p['method']} | {p['labels']} | – | – | failed: "
                         f"{p.get('error', '').replace('|', '/')} | | | | |")
            continue
        lines.append(f"| {p['budget']} | {p['method']} | {p['labels']} | {human(p['bytes'])} | {p['ipc']} | "
                     f"{_pm(p['accuracy'])} | {_pm(p['random'])} | {p['gain']:+.2f} | {_pm(p['ior'])} | "
                     f"{p['seconds']['total']:.0f} |")
    differ = [p for p in ok if "mean" in (p.get("outside_reader") or {})]
    if differ:
        lines += ["", "## What an outside reader loads", "",
                  "These sets store exact `.npy` tensors that differ from their image member; webdataset, wids, "
                  "timm and Hugging Face load the image member, trained here with the same recipe, lr and seeds:", ""]
        for p in differ:
            o = p["outside_reader"]
            lines.append(f"- `{p['name']}`: .{o['images']} {_pm(o)} % against .npy {_pm(p['accuracy'])} % "
                         f"({o['delta_vs_exact']:+.2f}; {100 * o['pixels_out_of_range']:.2f} % of pixels outside "
                         f"[0, 1], max |diff| {o['max_abs_diff']:.3f})")
    lines += ["", "## Best choice per budget", ""]
    for b in report["best"]:
        verdict = " — random is as good (within the spread)" if b["random_as_good"] else ""
        lines.append(f"- **{b['budget']}** ({human(b['bytes'])}): {b['method']} with {b['labels']} labels, "
                     f"{b['accuracy']:.2f} % (random {b['random']:.2f} %){verdict}")
    same = report["random_as_good"]
    lines += ["", "## Where random is as good", "",
              ("Random's mean is within the spread (the set beats it by no more than the larger std) for: "
               + ", ".join(f"`{n}`" for n in same) + ".") if same else
              "Nowhere: every point beats random by more than its spread.", ""]
    sec, sh = report["seconds"], report["shared"]
    lines += ["## Cost", "",
              f"{len(ok)} points, {sec['total']:.0f} s in all: distil {sec['distill']:.0f} s, networks on the sets "
              f"{sec['compressed']:.0f} s, random sides {sec['random']:.0f} s ({sh['random_sides']} trained once, "
              f"shared by {sh['points_using_them']} points), full-data network {sec['full_data']:.0f} s. "
              f"Standalone `evaluate --protocol fair` of every set: {sec['standalone_evaluation']:.0f} s.", ""]
    return "\n".join(lines)


def _ticks_y(lo: float, hi: float) -> list[float]:
    span = max(hi - lo, 1e-9)
    step = next(s for s in (0.5, 1, 2, 5, 10, 20, 25, 50) if span / s <= 8)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _ticks_x(lo: float, hi: float) -> list[float]:
    """log10 positions of 1-2-5 ticks (fewer when the range spans many decades)."""
    mults = (1, 2, 3, 5) if hi - lo < 1.5 else (1, 2, 5) if hi - lo < 3 else (1,)
    out = []
    for k in range(math.floor(lo), math.ceil(hi) + 1):
        for m in mults:
            v = k + math.log10(m)
            if lo <= v <= hi:
                out.append(v)
    return out


def _dashed(draw, a, b, fill, width=2, dash=6) -> None:
    (x0, y0), (x1, y1) = a, b
    n = max(1, int(math.hypot(x1 - x0, y1 - y0) / dash))
    for i in range(0, n, 2):
        t0, t1 = i / n, min(1.0, (i + 1) / n)
        draw.line([(x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0), (x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1)],
                  fill=fill, width=width)


def series(report: dict) -> list[dict]:
    """The plotted lines: one per method x labels, then random per labels (dashed), each with
    its points (bytes, mean, std) sorted by bytes."""
    ok = [p for p in report["points"] if p["status"] == "ok" and p["bytes"]]
    lines = []
    for m in report["settings"]["methods"]:
        for lab in report["settings"]["labels"]:
            pts = sorted((p["bytes"], p["accuracy"]["mean"], p["accuracy"]["std"]) for p in ok
                         if p["method"] == m and p["labels"] == lab)
            if pts:
                lines.append({"name": f"{m} ({lab})", "points": pts, "dashed": False})
    for lab in report["settings"]["labels"]:
        seen, pts = set(), []
        for p in ok:
            if p["labels"] == lab and p["random_side"] not in seen:
                seen.add(p["random_side"])
                pts.append((p["bytes"], p["random"]["mean"], p["random"]["std"]))
        if pts:
            lines.append({"name": f"random subsets ({lab})", "points": sorted(pts), "dashed": True})
    return lines


def plot_png(report: dict, *, size: tuple[int, int] = (900, 560)) -> bytes:
    """Accuracy (%) against total bytes on disk (log x), error bars of ± one std, each line
    named at its right end."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, BACKGROUND)
    d = ImageDraw.Draw(img)
    fnt, small = font(13), font(11)
    lh = line_height(small)
    left, right, top, bottom = 64, 190, 36, 48
    title = "accuracy vs bytes (fair protocol, mean ± std over runs; dashed: random real subsets of the same size)"
    d.text((left, 6), title, fill=INK, font=fnt)
    lines = series(report)
    if not lines:
        d.text((left, h // 2), "no finished points", fill=INK, font=fnt)
        return png_bytes(img)
    xs = [math.log10(b) for ln in lines for b, _, _ in ln["points"]]
    ys = [v for ln in lines for _, m, s in ln["points"] for v in (m - s, m + s)]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi - x_lo < 0.2:
        x_lo, x_hi = x_lo - 0.1, x_hi + 0.1
    pad = (x_hi - x_lo) * 0.04
    x_lo, x_hi = x_lo - pad, x_hi + pad
    y_lo, y_hi = min(ys), max(ys)
    y_pad = max((y_hi - y_lo) * 0.08, 0.5)
    y_lo, y_hi = max(0.0, y_lo - y_pad), min(100.0, y_hi + y_pad)

    def px(b: float) -> float:
        return left + (math.log10(b) - x_lo) / (x_hi - x_lo) * (w - left - right)

    def py(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline=INK)
    for t in _ticks_y(y_lo, y_hi):
        y = py(t)
        d.line([(left - 4, y), (left, y)], fill=INK)
        d.line([(left + 1, y), (w - right - 1, y)], fill=(235, 235, 235))
        label = f"{t:g}"
        d.text((left - 8 - text_size(small, label)[0], y - lh / 2), label, fill=INK, font=small)
    for t in _ticks_x(x_lo, x_hi):
        x = left + (t - x_lo) / (x_hi - x_lo) * (w - left - right)
        d.line([(x, h - bottom), (x, h - bottom + 4)], fill=INK)
        label = human(10 ** t)
        d.text((x - text_size(small, label)[0] / 2, h - bottom + 6), label, fill=INK, font=small)
    d.text((left + (w - left - right) / 2 - 60, h - bottom + 8 + lh), "total bytes on disk (log)", fill=INK,
           font=small)
    d.text((6, top - 14), "accuracy %", fill=INK, font=small)
    ends = []
    colours = iter(PALETTE * 4)
    for ln in lines:
        colour = RANDOM_INK if ln["dashed"] else next(colours)
        pts = [(px(b), py(m), s) for b, m, s in ln["points"]]
        for a, b in zip(pts, pts[1:]):
            (_dashed(d, a[:2], b[:2], colour) if ln["dashed"] else d.line([a[:2], b[:2]], fill=colour, width=2))
        for x, y, s in pts:
            lo_y, hi_y = y + s / (y_hi - y_lo) * (h - top - bottom), y - s / (y_hi - y_lo) * (h - top - bottom)
            d.line([(x, lo_y), (x, hi_y)], fill=colour)
            d.line([(x - 3, lo_y), (x + 3, lo_y)], fill=colour)
            d.line([(x - 3, hi_y), (x + 3, hi_y)], fill=colour)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ends.append([pts[-1][1], pts[-1][0], ln["name"], colour, pts[-1][1]])
    ends.sort()                               # names at the line ends, pushed apart to stay legible
    for i in range(1, len(ends)):
        ends[i][0] = max(ends[i][0], ends[i - 1][0] + lh + 2)
    for y, x, name, colour, y0 in ends:
        d.text((w - right + 8, y - lh / 2), name, fill=colour, font=small)
        d.line([(x + 4, y0), (w - right + 6, y)], fill=colour)
    return png_bytes(img)
