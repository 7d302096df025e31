"""JPEG members decode through simplejpeg when it is installed: the same pixels as Pillow for every
variant Pillow writes (sizes, gray/colour, chroma subsampling, progressive, restart markers);
CMYK and broken bytes fall back to Pillow, which decides; --max-pixels is checked from the header."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dcompress.io import codecs
from dcompress.io.codecs import ImageTooLarge, decode_image

pytestmark = pytest.mark.skipif(codecs._simplejpeg is None, reason="simplejpeg not installed (pyproject requires it)")

VARIANTS = [dict(quality=95), dict(quality=50, subsampling=0), dict(quality=75, subsampling=1),
            dict(quality=75, subsampling=2), dict(quality=80, progressive=True),
            dict(quality=90, optimize=True, restart_marker_blocks=1)]


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        arr = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def jpeg(size: tuple[int, int], mode: str, seed: int = 0, **kw) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.clip(rng.integers(0, 256, (h, w, 3)) + np.linspace(0, 120, w)[None, :, None], 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (32, 32), (100, 37)])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_fast_path_gives_pillows_pixels(size, mode):
    for kw in VARIANTS:
        data = jpeg(size, mode, **kw)
        fast = codecs._decode_jpeg_fast(data, None)
        assert fast is not None, kw                      # the fast path took it
        assert fast.dtype == np.uint8 and fast.flags["C_CONTIGUOUS"]
        assert np.array_equal(fast, pillow_pixels(data)), kw
        assert np.array_equal(decode_image(data, "jpg"), fast)


def test_cmyk_goes_to_pillow_and_comes_back_rgb():
    data = jpeg((9, 5), "CMYK")
    assert codecs._decode_jpeg_fast(data, None) is None
    out = decode_image(data, "jpeg")
    assert out.shape == (3, 5, 9) and np.array_equal(out, pillow_pixels(data))


def test_broken_bytes_fail_as_with_pillow():
    data = jpeg((32, 32), "RGB")
    for broken in (data[: len(data) // 2], b"\xff\xd8 not a jpeg", data[:2]):
        assert codecs._decode_jpeg_fast(broken, None) is None
        with pytest.raises(Exception) as fast_err:
            decode_image(broken, "jpg")
        with pytest.raises(Exception) as pil_err:
            pillow_pixels(broken)
        assert type(fast_err.value) is type(pil_err.value)


def test_max_pixels_from_the_header_before_decoding():
    data = jpeg((40, 30), "RGB")
    with pytest.raises(ImageTooLarge, match="40x30 = 1200 pixels, above --max-pixels 1000"):
        decode_image(data, "jpg", max_pixels=1000)
    assert decode_image(data, "jpg", max_pixels=1200).shape == (3, 30, 40)


def test_decoder_is_named_for_the_store_key():
    assert codecs.jpeg_decoder() == "simplejpeg"
