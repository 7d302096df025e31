"""Bytes <-> arrays for shard members: images (Pillow; JPEG by simplejpeg and plain 8-bit PNG by
pyspng when installed), `.npy` (never pickled), `.cls` labels, JSON.

Torch-free: the input decoder (`decode`), `dcompress shard` (`sources`), the output writer
(`output`) and the loader share these.
"""
from __future__ import annotations

import io
import json
import re
import struct
import warnings
import zlib

import numpy as np

from ..limits import MAX_PIXELS

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "ppm", "pgm", "pbm", "bmp", "tif", "tiff")
_LABEL = re.compile(rb"^\s*[+-]?[0-9]+\s*$")


class ImageTooLarge(ValueError):
    """The header declares more pixels than --max-pixels (checked before decoding)."""


try:
    import simplejpeg as _simplejpeg
except ImportError:     # optional: Pillow decodes JPEG too, ~6x slower per small image
    _simplejpeg = None

# JPEG colour spaces simplejpeg decodes here, and to what (Pillow's "L" and "RGB"); others
# (CMYK, YCCK) go to Pillow, as does anything simplejpeg refuses.
_SIMPLEJPEG_SPACES = {"Gray": "GRAY", "YCbCr": "RGB", "RGB": "RGB"}

try:
    import pyspng as _pyspng
except ImportError:     # optional: Pillow decodes PNG too, ~2x slower per small image
    _pyspng = None

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FAST_PIXELS = 1 << 27      # larger images go to Pillow, whose decompression-bomb limit then applies


def jpeg_decoder() -> str:
    """Which decoder reads JPEG members: "simplejpeg" or "pillow" (recorded in the store key)."""
    return "simplejpeg" if _simplejpeg is not None else "pillow"


def png_decoder() -> str:
    """Which decoder reads plain 8-bit PNG members: "pyspng" or "pillow" (recorded in the store key)."""
    return "pyspng" if _pyspng is not None else "pillow"


def _decode_jpeg_fast(data: bytes, max_pixels: int | None) -> np.ndarray | None:
    """simplejpeg (libjpeg-turbo, no Python objects per image) for baseline/progressive Gray and
    YCbCr JPEGs: the same pixels as Pillow's decoder (both libjpeg-turbo's default integer DCT and
    fancy upsampling; tests/unit/test_codecs_jpeg.py), ~6x faster on 32 px images. None hands the
    image to Pillow (not installed, another colour space, or bytes simplejpeg will not decode:
    Pillow then decides what is wrong with them)."""
    if _simplejpeg is None:
        return None
    try:
        h, w, space, _ = _simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    target = _SIMPLEJPEG_SPACES.get(space)
    if target is None or h < 1 or w < 1:
        return None
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels, above --max-pixels {max_pixels}")
    try:
        arr = _simplejpeg.decode_jpeg(data, colorspace=target)
    except ValueError:
        return None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _decode_png_fast(data: bytes, max_pixels: int | None) -> np.ndarray | None:
    """pyspng (libspng) for non-interlaced 8-bit grayscale and RGB PNGs, the kind datasets are
    made of: the same pixels as Pillow (neither applies gAMA, sBIT or tRNS to L/RGB output;
    tests/unit/test_codecs_png.py), ~2x faster than Pillow on 28 px images with those checks
    (31 vs 67 us; libspng's decode alone is 15). None hands the image to Pillow:
    not installed, another colour type or bit depth (palettes, alpha, 16-bit), interlaced, no
    IEND, a bad CRC in any chunk, or an image data stream that does not inflate to exactly its
    scanlines with a matching Adler-32 (pyspng is built to skip both checks, so corrupted data
    would decode to wrong pixels where Pillow refuses it), or bytes libspng will not decode
    (Pillow then decides what is wrong with them)."""
    if _pyspng is None or len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    depth, colour, interlace = data[24], data[25], data[28]
    if depth != 8 or colour not in (0, 2) or interlace != 0 or w < 1 or h < 1:
        return None
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels, above --max-pixels {max_pixels}")
    if w * h > _PNG_FAST_PIXELS:
        return None
    pos, idat = 8, []
    while True:                                      # every chunk's CRC, up to IEND: pyspng ignores them
        if pos + 12 > len(data):
            return None
        end = pos + 8 + int.from_bytes(data[pos:pos + 4], "big")
        if end + 4 > len(data) or zlib.crc32(data[pos + 4:end]) != int.from_bytes(data[end:end + 4], "big"):
            return None
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8:end])
        elif kind == b"IEND":
            break
        pos = end + 4
    expected = h * (1 + w * (1 if colour == 0 else 3))  # the filtered scanlines
    inflate = zlib.decompressobj()
    try:                                             # and the zlib stream whole, its Adler-32 checked
        rows = inflate.decompress(b"".join(idat), expected + 1)
    except zlib.error:
        return None
    if len(rows) != expected or not inflate.eof:
        return None
    try:
        arr = _pyspng.load(data, format="L" if colour == 0 else "RGB")
    except Exception:  # noqa: BLE001 - any libspng refusal: Pillow decides
        return None
    if arr.dtype != np.uint8 or arr.shape[:2] != (h, w):
        return None
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


_FAST_DECODERS = {"jpg": _decode_jpeg_fast, "jpeg": _decode_jpeg_fast, "png": _decode_png_fast}


def decode_image(data: bytes, ext: str, max_pixels: int | None = MAX_PIXELS, *, fast: bool = True) -> np.ndarray:
    """Image bytes -> uint8 array [C, H, W] (C = 1 or 3; alpha and palettes resolved).

    Pillow decodes every format here (torchvision 0.29 deprecates its own image codecs); JPEG
    goes to simplejpeg first and plain 8-bit PNG to pyspng when they are installed
    (`_decode_jpeg_fast`, `_decode_png_fast`: same pixels, 2-6x faster; `fast=False`: Pillow
    only, the reference they are tested and benchmarked against). The size is read from the
    header first: more than `max_pixels` pixels raises ImageTooLarge before any pixel is
    decoded (decompression bombs).
    """
    decoder = _FAST_DECODERS.get(ext) if fast else None
    if decoder is not None:
        arr = decoder(data, max_pixels)
        if arr is not None:
            return arr
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our own limit decides below
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:                              # beyond Pillow's hard limit
        raise ImageTooLarge(f"{e} (--max-pixels {max_pixels})") from None
    except Image.UnidentifiedImageError:       # its message names the buffer: <_io.BytesIO object at 0x...>
        raise Image.UnidentifiedImageError("not an image format Pillow can read") from None
    with im:
        w, h = im.size
        if w < 1 or h < 1:
            raise ValueError(f"image has no pixels ({w}x{h})")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels, above --max-pixels {max_pixels}")
        im.load()
        if im.mode not in ("L", "RGB"):
            im = im.convert("L" if im.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
        arr = np.asarray(im)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.array(arr, dtype=np.uint8, order="C")  # a writable copy


def parse_label(raw) -> int:
    """An ASCII integer label (`.cls`) -> int; ValueError when it is not one or overflows int64."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if not isinstance(raw, bytes) or not _LABEL.match(raw):
        raise ValueError("not an integer")
    if len(raw.strip().lstrip(b"+-").lstrip(b"0")) > 19:      # past int64 (and int()'s digit limit)
        raise ValueError("outside the int64 range")
    value = int(raw)
    if not -(2 ** 63) <= value < 2 ** 63:
        raise ValueError("outside the int64 range")
    return value


def encode_png(img_u8: np.ndarray) -> bytes:
    """uint8 [C, H, W] -> PNG bytes (deterministic, lossless; 1 channel stays grayscale)."""
    from PIL import Image

    arr = img_u8[0] if img_u8.shape[0] == 1 else img_u8.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
