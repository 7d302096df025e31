"""One sample -> a decoded image and its raw label: the unit of work of a decode worker.

`decode_sample` turns one WebDataset sample (a dict of member bytes, from `stream.read_shard`)
into a uint8 [C, H, W] image (`codecs.decode_image`, then `transform_image` for `--size` and
`--channels`) and its raw label (`labels.sample_label`: an int, or a class name that
`labels.assign_classes` maps to a class index once the whole input is read); the options that
change the decoded bytes (`DecodeOptions`) are part of the decoded store's key. Nothing here
unpickles: image bytes go to the image decoder, labels are parsed as text.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputDataError, UsageError
from ..limits import MAX_LABEL, MAX_PIXELS
from .codecs import IMAGE_EXTS, decode_image
from .labels import class_names_problem, implausible_label, label_key_parts, sample_label
from .schema import _is_int
from .stream import BadSample


RESIZE_MODES = ("crop", "pad", "stretch")
MAX_SIZE = 4096            # --size above this is a typo (a 4096x4096x3 image is 48 MiB decoded)


@dataclass(frozen=True)
class DecodeOptions:
    """What decides the decoded bytes and the labels of an input (the decoded store's cache key:
    `to_dict()`; also recorded in the output manifest's `dcompress.source.decode`).

    label_key: where the label is: `cls` (an ASCII integer member), any other member name
        (`txt`, `label`, ...: text, an integer or a class name), or `json:<field>[.<sub>...]`
        (a field of the `.json` member; `<member>:<field>` for a member ending in `json`).
    max_pixels: images whose header declares more pixels are bad samples.
    size: every image becomes size x size (None: images are used as decoded and must all have
        one shape).
    resize_mode: with `size`: `crop` (the centred square of the shorter side, resized: resize
        shorter side + centre crop), `pad` (longer side resized to `size`, centred on black),
        `stretch` (resized to size x size, aspect ratio not kept).
    channels: 1 (grayscale) or 3 (RGB) converts every image; None keeps the decoded channels.
    class_names: the class list (`--class-names FILE`): string labels map to their position,
        integer labels index it. None: from the input manifest, a classes.txt or the labels.

    Invalid values raise UsageError (exit 2) on construction.
    """

    label_key: str = "cls"
    max_pixels: int | None = MAX_PIXELS
    size: int | None = None
    resize_mode: str = "crop"
    channels: int | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        label_key_parts(self.label_key)
        if self.max_pixels is not None and (not _is_int(self.max_pixels) or self.max_pixels < 1):
            raise UsageError(f"--max-pixels must be >= 1, got {self.max_pixels!r}")
        if self.size is not None and (not _is_int(self.size) or not 1 <= self.size <= MAX_SIZE):
            raise UsageError(f"--size must be an integer in [1, {MAX_SIZE}], got {self.size!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise UsageError(f"--resize-mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if self.size is None and self.resize_mode != "crop":
            raise UsageError(f"--resize-mode {self.resize_mode} needs --size S (the side of the square images)")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"--channels must be 1 or 3, got {self.channels!r}")
        if self.class_names is not None:
            names = tuple(self.class_names)
            object.__setattr__(self, "class_names", names)
            problem = class_names_problem(names)
            if problem:
                raise UsageError(f"--class-names: {problem}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d


def shape_mismatch(url: str, key: str, got: tuple[int, ...], expected: tuple[int, ...]) -> InputDataError:
    """The error for an image whose shape differs from the first sample's (`got`, `expected`:
    C, H, W), with the option that fixes it: --size for sizes, --channels for channels."""
    shape = lambda s: "x".join(str(int(v)) for v in s)  # noqa: E731
    if got[0] != expected[0]:
        fix = (f"pass --channels {max(got[0], expected[0])} to convert every image"
               if {got[0], expected[0]} <= {1, 3} else "all images need the same channels")
        what = "channels"
    else:
        fix = ("pass --size S to resize every image to SxS (--resize-mode crop|pad|stretch; crop = resize "
               "the shorter side, then centre-crop)")
        what = "image sizes"
    return InputDataError(f"mixed {what}: {shape(got)} (CxHxW), expected {shape(expected)} like the first "
                          f"sample; {fix}", path=url, key=key)


def sample_image(sample: dict) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    return None


def transform_image(arr: np.ndarray, opts: DecodeOptions) -> np.ndarray:
    """The decoded image [C, H, W] with `opts.channels` and `opts.size` applied (Pillow).

    Channels: RGB -> L with Pillow's ITU-R 601-2 luma; L -> RGB repeats the channel. Resizing
    uses Pillow's `Image.resize` with the BILINEAR filter, which is antialiased (its support
    grows with the downscale factor, like torchvision's `Resize(antialias=True)`) and
    deterministic: `crop` resizes the centred square of side min(H, W) to size x size (one
    resampling with a sub-pixel box: resize shorter side + centre crop without the intermediate
    rounding); `pad` resizes so the longer side is `size` (the shorter rounded, at least 1) and
    centres it on black (offset (size - side) // 2); `stretch` resizes to size x size.
    """
    from PIL import Image

    c = arr.shape[0]
    want_c = opts.channels or c
    s = opts.size
    if want_c == c and (s is None or arr.shape[1:] == (s, s)):
        return arr
    im = Image.fromarray(arr[0] if c == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0)))
    if want_c != c:
        im = im.convert("L" if want_c == 1 else "RGB")
    if s is not None and im.size != (s, s):
        w, h = im.size
        if opts.resize_mode == "stretch":
            im = im.resize((s, s), Image.Resampling.BILINEAR)
        elif opts.resize_mode == "crop":
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            im = im.resize((s, s), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        else:
            scale = s / max(w, h)
            nw, nh = max(1, min(s, round(w * scale))), max(1, min(s, round(h * scale)))
            canvas = Image.new(im.mode, (s, s), 0)
            canvas.paste(im.resize((nw, nh), Image.Resampling.BILINEAR), ((s - nw) // 2, (s - nh) // 2))
            im = canvas
    out = np.asarray(im)
    out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    return np.array(out, dtype=np.uint8, order="C")


def decode_sample(sample: dict, opts: DecodeOptions) -> tuple[np.ndarray, int | str]:
    """(uint8 image [C, H, W], raw label: int or class name) of one sample, with `opts.size`,
    `opts.resize_mode` and `opts.channels` applied; BadSample for a sample to skip,
    InputDataError for a label that makes the whole input unusable."""
    found = sample_image(sample)
    if found is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise BadSample(f"no image member (has: {', '.join(members)})")
    ext, data = found
    try:
        arr = decode_image(data, ext, opts.max_pixels)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad sample
        why = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the image bytes", str(e))   # no addresses: reports repeat
        raise BadSample(f".{ext} is not a decodable image ({type(e).__name__}: {why})") from None
    label = sample_label(sample, opts.label_key)
    if isinstance(label, int) and not 0 <= label < MAX_LABEL:
        raise implausible_label(label, opts.label_key, sample)
    return transform_image(arr, opts), label
