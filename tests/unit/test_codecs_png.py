"""Plain 8-bit PNG members decode through pyspng when it is installed: the same pixels as Pillow
for every variant Pillow writes (sizes, gray/colour, compression levels, text, pHYs, ICC, tRNS,
gAMA and sBIT chunks); palettes, alpha, 16-bit and interlaced images go to Pillow; bad CRCs before
the first IDAT (which Pillow refuses and pyspng would ignore) go to Pillow too; and on randomly
corrupted PNGs the fast path accepts exactly what Pillow accepts, with the same pixels."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from dcompress.io import codecs
from dcompress.io.codecs import ImageTooLarge, decode_image

pytestmark = pytest.mark.skipif(codecs._pyspng is None, reason="pyspng not installed (pyproject requires it)")


def pillow_pixels(data: bytes) -> np.ndarray:
    """What decode_image gives without the fast path (Pillow, then its mode conversions)."""
    return decode_image(data, "png", None, fast=False)


def image(size: tuple[int, int], mode: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.clip(rng.integers(0, 256, (h, w, 3)) // 2 + np.linspace(0, 120, w)[None, :, None], 0, 255)
    return Image.fromarray(arr.astype(np.uint8)).convert(mode)


def png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """`data` with a chunk inserted right after IHDR (correct CRC)."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:33] + chunk + data[33:]


def text_info() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 40)
    info.add_text("z", "compressed " * 20, zip=True)
    return info


SAVE_VARIANTS = [dict(), dict(compress_level=0), dict(compress_level=1), dict(compress_level=9),
                 dict(optimize=True), dict(pnginfo=text_info()), dict(dpi=(300, 300))]


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (28, 28), (100, 37)])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_fast_path_gives_pillows_pixels(size, mode):
    im = image(size, mode)
    variants = [png(im, **kw) for kw in SAVE_VARIANTS]
    variants.append(png(im, transparency=7 if mode == "L" else (7, 8, 9)))               # tRNS
    variants.append(with_chunk(png(im), b"gAMA", struct.pack(">I", 100000)))               # gamma 1.0
    variants.append(with_chunk(png(im), b"sBIT", bytes([5] * (1 if mode == "L" else 3))))  # 5 significant bits
    variants.append(with_chunk(png(im), b"iCCP", b"p\0\0" + zlib.compress(b"not really a profile")))
    for i, data in enumerate(variants):
        fast = codecs._decode_png_fast(data, None)
        assert fast is not None, i                       # the fast path took it
        assert fast.dtype == np.uint8 and fast.flags["C_CONTIGUOUS"] and fast.flags["WRITEABLE"]
        assert np.array_equal(fast, pillow_pixels(data)), i
        assert np.array_equal(decode_image(data, "png"), fast)


def test_many_dataset_images_identical():
    """2,000 small gray images (Fashion-MNIST's kind) and 500 RGB ones, as the shard writer saves them."""
    rng = np.random.default_rng(3)
    for k in range(2000):
        arr = rng.integers(0, 256, (28, 28), dtype=np.uint8) if k % 2 else (rng.random((28, 28)) > 0.7).astype(np.uint8) * 255
        data = codecs.encode_png(arr[None])
        assert np.array_equal(codecs._decode_png_fast(data, None), pillow_pixels(data))
    for k in range(500):
        arr = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
        data = codecs.encode_png(arr)
        assert np.array_equal(codecs._decode_png_fast(data, None), arr)


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "I;16", "1"])
def test_other_colour_types_go_to_pillow(mode):
    im = image((9, 5), "RGB").convert(mode) if mode != "I;16" else Image.fromarray(
        np.arange(45, dtype=np.uint16).reshape(5, 9) * 1000)
    data = png(im)
    assert codecs._decode_png_fast(data, None) is None
    out = decode_image(data, "png")
    assert out.dtype == np.uint8 and out.shape[1:] == (5, 9)
    assert np.array_equal(out, pillow_pixels(data))


def test_interlaced_goes_to_pillow():
    data = bytearray(png(image((9, 5), "L")))
    data[28] = 1                                         # IHDR interlace method: Adam7
    assert codecs._decode_png_fast(bytes(data), None) is None


def test_bad_crc_before_idat_goes_to_pillow_which_refuses():
    data = png(image((16, 16), "RGB"), pnginfo=text_info())
    for where in (29, 33 + 8 + 3):                       # the IHDR CRC, and the first text chunk's data
        broken = bytearray(data)
        broken[where] ^= 0xFF
        assert codecs._decode_png_fast(bytes(broken), None) is None
        with pytest.raises(Exception) as fast_err:
            decode_image(bytes(broken), "png")
        with pytest.raises(Exception) as pil_err:
            pillow_pixels(bytes(broken))
        assert type(fast_err.value) is type(pil_err.value)


def test_random_corruption_accepted_exactly_when_pillow_accepts():
    """Differential fuzz: 600 mutants (byte flips, truncations, insertions) of four PNGs; for each,
    decode_image either fails with Pillow's exception type or returns Pillow's pixels. (Nearly
    every such mutant breaks a CRC, so the fast path hands it to Pillow.)"""
    rng = np.random.default_rng(7)
    bases = [png(image((28, 28), "L", 1)), png(image((20, 11), "RGB", 2)),
             png(image((28, 28), "L", 3), pnginfo=text_info()), png(image((5, 40), "RGB", 4), compress_level=0)]
    seen = []
    for k in range(600):
        data = bytearray(bases[k % len(bases)])
        op = k % 3
        if op == 0:
            for pos in rng.integers(0, len(data), int(rng.integers(1, 4))):
                data[pos] = int(rng.integers(0, 256))
        elif op == 1:
            data = data[:int(rng.integers(8, len(data)))]
        else:
            pos = int(rng.integers(8, len(data)))
            data = data[:pos] + bytes(rng.integers(0, 256, int(rng.integers(1, 6))).astype(np.uint8)) + data[pos:]
        seen.append(outcome(bytes(data)))
    assert seen.count("refused") > 100 and seen.count("pillow") > 10     # both kinds were exercised


def with_crcs_fixed(data: bytes) -> bytes:
    out, pos = bytearray(data), 8
    while pos + 12 <= len(out):
        end = pos + 8 + int.from_bytes(out[pos:pos + 4], "big")
        if end + 4 > len(out):
            break
        out[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(out[pos + 4:end])))
        pos = end + 4
    return bytes(out)


def single_idat(data: bytes, rows: bytes) -> bytes:
    """`data` (IHDR, IDAT, IEND as Pillow writes small images) with its IDAT replaced by `rows` compressed."""
    body = zlib.compress(rows)
    idat = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    return data[:33] + idat + data[-12:]


def outcome(data: bytes):
    try:
        want = pillow_pixels(data)
    except Exception as e:  # noqa: BLE001 - Pillow refuses: so must decode_image, with its exception
        with pytest.raises(type(e)):
            decode_image(data, "png", None)
        return "refused"
    assert np.array_equal(decode_image(data, "png", None), want)
    return "fast" if codecs._decode_png_fast(data, None) is not None else "pillow"


def test_corrupt_image_data_with_valid_crcs_is_refused_as_pillow_refuses_it():
    """pyspng skips CRCs and the zlib Adler-32: flipped bytes in IDAT with the CRCs recomputed
    (1,200 of 1,500 such mutants decoded to wrong pixels through pyspng alone) must still be
    refused; valid streams of edited scanlines (pixels, and filter types 0-4 or invalid) must
    decode as Pillow decodes them or be refused as Pillow refuses them."""
    rng = np.random.default_rng(11)
    bases = [png(image((28, 28), "L", 1)), png(image((20, 11), "RGB", 2)), png(image((5, 40), "RGB", 4))]
    seen = set()
    for k in range(300):
        data = bytearray(bases[k % 3])
        length = int.from_bytes(data[33:37], "big")
        for pos in rng.integers(41, 41 + length, int(rng.integers(1, 3))):
            data[pos] = int(rng.integers(0, 256))
        seen.add(outcome(with_crcs_fixed(bytes(data))))
    for k in range(150):
        data = bases[k % 3]
        w, h = struct.unpack(">II", data[16:24])
        stride = 1 + w * (1 if data[25] == 0 else 3)
        rows = bytearray(zlib.decompress(data[41:41 + int.from_bytes(data[33:37], "big")]))
        y = int(rng.integers(0, h))
        if k % 2:
            rows[y * stride] = int(rng.integers(0, 8))             # a filter type byte, 5-7 invalid
        else:
            rows[y * stride + 1 + int(rng.integers(0, stride - 1))] ^= 0x55
        seen.add(outcome(single_idat(data, bytes(rows))))
    assert {"refused", "fast"} <= seen


def test_max_pixels_from_the_header_before_decoding():
    data = png(image((40, 30), "L"))
    with pytest.raises(ImageTooLarge, match="40x30 = 1200 pixels, above --max-pixels 1000"):
        decode_image(data, "png", max_pixels=1000)
    assert decode_image(data, "png", max_pixels=1200).shape == (1, 30, 40)


def test_decoder_is_named_for_the_store_key():
    assert codecs.png_decoder() == "pyspng"
