"""A realistic large input made from Fashion-MNIST: colour, RGB JPEG, any size, any N, any class count.

    python tools/make_dataset.py -o /data/big --n 1000000 --size 32                 # 1M 32x32 RGB JPEG shards
    python tools/make_dataset.py -o /data/tiny --n 100000 --size 64 --classes 200    # Tiny-ImageNet-shaped
    python tools/make_dataset.py -o /data/folder --n 5000 --size 64 --layout imagefolder --mixed-sizes
    python tools/make_dataset.py -o /data/test --n 10000 --size 32 --split test      # from the test split

Each output image is one Fashion-MNIST image (train or test split), augmented (random resized
crop, flip, small rotation), colourised with a palette and resized. With `--unique M`, only M
distinct images are made (in parallel) and the N samples tile them (sample i is image i mod M
under its own key): 1M samples cost the encoding of M, and decoding them costs the same as
decoding 1M distinct images. Classes: the 10 garment
classes times `classes / 10` colour palettes, so a class is (garment, palette) and remains
learnable: `--classes 200` gives Tiny-ImageNet's class count. Image `i` depends only on
(`--seed`, `i`), so any N and any number of `--jobs` give the same bytes.

Layouts:
    shards       WebDataset tars written by webdataset's TarWriter the way other tools write them:
                 `<key>.jpg` + `<key>.json` ({"label": int, "name": str}); read them with
                 `dcompress distill DIR --label-key json:label`. A `classes.txt` lists the names.
    imagefolder  `<class name>/<key>.jpg` (with `--mixed-sizes`, each image's side is drawn from
                 [size/2, 2*size], as in a scraped folder; shard it with `dcompress shard --size`).
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import struct
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

FMNIST = Path("/usr/share/datasets/fashion-mnist")
GARMENTS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
_SRC: dict = {}
_TILES: list = []          # with --unique: the M encoded images (jpeg bytes, class, name), inherited by forked workers


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _source(split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _SRC:
        prefix = "train" if split == "train" else "t10k"
        _SRC[split] = (read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz"),
                       read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz"))
    return _SRC[split]


def palettes(n: int, seed: int) -> np.ndarray:
    """n (foreground, background) RGB colour pairs, well apart in hue."""
    rng = np.random.default_rng([seed, 7])
    hues = (np.arange(n) / max(n, 1) + rng.uniform(0, 1)) % 1.0
    import colorsys
    fg = np.array([colorsys.hsv_to_rgb(h, 0.75, 1.0) for h in hues]) * 255
    bg = np.array([colorsys.hsv_to_rgb((h + 0.5) % 1.0, 0.5, 0.25) for h in hues]) * 255
    return np.stack([fg, bg], 1).astype(np.float32)          # [n, 2, 3]


def make_image(i: int, *, split: str, size: int, classes: int, seed: int, mixed: bool):
    """(PIL RGB image, class index, class name) of output image `i`."""
    from PIL import Image

    images, labels = _source(split)
    rng = np.random.default_rng([seed, i])
    j = int(rng.integers(len(labels)))
    garment = int(labels[j])
    per = classes // 10
    palette = int(rng.integers(per))
    cls = garment * per + palette
    pal = palettes(classes, seed)[cls]
    # augmentation on the 28x28 source: random resized crop (scale 0.7-1), flip, rotation +-10 deg
    im = Image.fromarray(images[j])
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = im.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR)
    s = float(np.sqrt(rng.uniform(0.7, 1.0))) * 28
    x0, y0 = rng.uniform(0, 28 - s, 2)
    side = int(rng.integers(max(8, size // 2), 2 * size + 1)) if mixed else size
    w, h = (side, int(round(side * rng.uniform(0.75, 1.33)))) if mixed else (side, side)
    im = im.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + s, y0 + s))
    g = np.asarray(im, dtype=np.float32)[..., None] / 255.0
    jitter = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    rgb = g * pal[0] * jitter + (1 - g) * pal[1]
    rgb += rng.normal(0, 4, rgb.shape).astype(np.float32)
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    name = f"{GARMENTS[garment]}_{palette:02d}" if per > 1 else GARMENTS[garment]
    return out, cls, name


def class_names(classes: int) -> list[str]:
    per = classes // 10
    return [f"{GARMENTS[c // per]}_{c % per:02d}" if per > 1 else GARMENTS[c] for c in range(classes)]


def _jpeg(im, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encoded(i: int, opts: dict) -> tuple[bytes, int, str]:
    """(jpeg bytes, class, class name) of sample i (a tile when --unique is set)."""
    if _TILES:
        return _TILES[i % len(_TILES)]
    im, cls, name = make_image(i, split=opts["split"], size=opts["size"], classes=opts["classes"],
                               seed=opts["seed"], mixed=opts["mixed"])
    return _jpeg(im, opts["quality"]), cls, name


def make_tiles(args: tuple) -> list:
    start, stop, opts = args
    return [encoded(i, opts) for i in range(start, stop)]


def write_shard(args: tuple) -> tuple[str, int]:
    import webdataset as wds

    out, index, start, stop, opts = args
    path = Path(out) / f"{opts['split']}-{index:06d}.tar"
    tmp = path.with_name(path.name + ".tmp")
    with wds.TarWriter(str(tmp), encoder=False, mtime=0) as w:
        for i in range(start, stop):
            data, cls, name = encoded(i, opts)
            w.write({"__key__": f"{opts['split']}{i:08d}", "jpg": data,
                     "json": json.dumps({"label": cls, "name": name}).encode()})
    os.replace(tmp, path)
    return str(path), stop - start


def write_folder_part(args: tuple) -> int:
    out, start, stop, opts = args
    for i in range(start, stop):
        data, cls, name = encoded(i, opts)
        d = Path(out) / name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{opts['split']}{i:08d}.jpg").write_bytes(data)
    return stop - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", required=True, type=Path)
    ap.add_argument("--n", type=int, required=True, help="number of images")
    ap.add_argument("--size", type=int, default=64, help="image side (default 64)")
    ap.add_argument("--classes", type=int, default=10, help="a multiple of 10 (garment x palette)")
    ap.add_argument("--layout", choices=("shards", "imagefolder"), default="shards")
    ap.add_argument("--mixed-sizes", action="store_true", help="draw each image's size (imagefolder realism)")
    ap.add_argument("--split", choices=("train", "test"), default="train", help="Fashion-MNIST split to draw from")
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality")
    ap.add_argument("--unique", type=int, default=None, help="distinct images made; samples tile them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    if a.classes < 10 or a.classes % 10:
        ap.error("--classes must be a multiple of 10")
    if a.n < 1 or a.size < 8:
        ap.error("--n must be >= 1 and --size >= 8")
    if a.out.exists() and any(a.out.iterdir()):
        ap.error(f"{a.out} exists and is not empty")
    a.out.mkdir(parents=True, exist_ok=True)
    opts = {"split": a.split, "size": a.size, "classes": a.classes, "seed": a.seed, "mixed": a.mixed_sizes,
            "quality": a.quality}
    t0 = time.time()
    if a.unique is not None and a.unique < a.n:
        chunk = max(1, math.ceil(a.unique / (4 * a.jobs)))
        with ProcessPoolExecutor(a.jobs) as pool:
            for part in pool.map(make_tiles, [(s, min(s + chunk, a.unique), opts)
                                              for s in range(0, a.unique, chunk)]):
                _TILES.extend(part)
        print(f"[{time.time() - t0:6.0f} s] {len(_TILES)} distinct images", file=sys.stderr, flush=True)
    step = a.shard_size if a.layout == "shards" else max(1, math.ceil(a.n / (4 * a.jobs)))
    bounds = [(s, min(s + step, a.n)) for s in range(0, a.n, step)]
    done = 0
    with ProcessPoolExecutor(a.jobs) as pool:
        if a.layout == "shards":
            results = pool.map(write_shard, [(str(a.out), k, s, e, opts) for k, (s, e) in enumerate(bounds)])
        else:
            results = pool.map(write_folder_part, [(str(a.out), s, e, opts) for s, e in bounds])
        for r in results:
            done += r[1] if isinstance(r, tuple) else r
            print(f"[{time.time() - t0:6.0f} s] {done}/{a.n}", file=sys.stderr, flush=True)
    if a.layout == "shards":
        (a.out / "classes.txt").write_text("\n".join(class_names(a.classes)) + "\n")
    report = {"out": str(a.out), "n": a.n, "unique": len(_TILES) or a.n, "size": a.size, "classes": a.classes, "layout": a.layout,
              "mixed_sizes": a.mixed_sizes, "shards": len(bounds) if a.layout == "shards" else 0,
              "bytes": sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file()),
              "seconds": round(time.time() - t0, 1)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
