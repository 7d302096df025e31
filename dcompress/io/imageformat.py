"""How an output stores its images (`distill --image-format`): `png` (lossless, the default),
`jpeg:Q` or `webp:Q` (lossy, quality Q), each in the member a reader decodes by its name
(webdataset decodes `.jpg` and `.webp` by extension). Pillow encodes; the same bytes are
written and decoded back before labelling, so that what a reader loads is what was labelled
and what `evaluate` trains on.

Torch-free (the manifest and `inspect` read it)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

MEMBERS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
IMAGE_MEMBERS = tuple(MEMBERS.values())
DEFAULT_QUALITY = 90


@dataclass(frozen=True)
class ImageFormat:
    """`name` png | jpeg | webp, `quality` 1-100 for the lossy ones (None for png)."""

    name: str = "png"
    quality: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> ImageFormat:
        """`png`, `jpeg[:Q]` or `webp[:Q]` (Q in 1..100, default 90); UsageError otherwise."""
        if text is None:
            return cls()
        name, _, q = str(text).strip().lower().partition(":")
        name = "jpeg" if name == "jpg" else name
        if name not in MEMBERS:
            raise UsageError(f"--image-format must be png, jpeg:Q or webp:Q (Q in 1..100), got {text!r}")
        if name == "png":
            if q:
                raise UsageError(f"--image-format png takes no quality, got {text!r}")
            return cls()
        try:
            quality = int(q) if q else DEFAULT_QUALITY
        except ValueError:
            raise UsageError(f"--image-format {name}:Q needs an integer quality Q in 1..100, got {q!r}") from None
        if not 1 <= quality <= 100:
            raise UsageError(f"--image-format quality must be in 1..100, got {quality}")
        return cls(name, quality)

    @property
    def lossy(self) -> bool:
        return self.name != "png"

    @property
    def member(self) -> str:
        """The member name (extension) of the images: png, jpg, webp."""
        return MEMBERS[self.name]

    def __str__(self) -> str:
        return self.name if self.quality is None else f"{self.name}:{self.quality}"

    def encode(self, img_u8: np.ndarray) -> bytes:
        """uint8 [C, H, W] -> image bytes (deterministic: same pixels, same bytes)."""
        from PIL import Image

        from .codecs import encode_png

        if not self.lossy:
            return encode_png(img_u8)
        arr = img_u8[0] if img_u8.shape[0] == 1 else img_u8.transpose(1, 2, 0)
        buf = io.BytesIO()
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
        if self.name == "jpeg":
            im.save(buf, format="JPEG", quality=self.quality, optimize=False, progressive=False)
        else:
            im.save(buf, format="WEBP", quality=self.quality, method=6)
        return buf.getvalue()

    def stored(self, images_u8: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """uint8 [N, C, H, W] -> (each image's bytes in this format, the pixels a reader decodes
        from them, as `decode_as` does)."""
        encoded = [self.encode(img) for img in images_u8]
        return encoded, np.stack([decode_as(b, self.member, images_u8.shape[1], None) for b in encoded])

    def roundtrip(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 [N, C, H, W] -> the pixels a reader decodes once they are stored in this format;
        png is lossless: the array itself."""
        return self.stored(images_u8)[1] if self.lossy else images_u8


def member_of(sample: dict) -> str | None:
    """The image member of a written sample (png, jpg or webp), None when it has none."""
    return next((m for m in IMAGE_MEMBERS if m in sample), None)


def decode_as(data: bytes, member: str, channels: int, max_pixels: int | None) -> np.ndarray:
    """An output's image member -> uint8 [channels, H, W]: a grayscale image stored as WebP (which
    has no grayscale form) comes back as RGB and is converted to luma as Pillow's "L" does."""
    from .codecs import decode_image

    img = decode_image(data, member, max_pixels)
    if img.shape[0] == 3 and channels == 1:
        from PIL import Image

        img = np.array(Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).convert("L"))[None]
    return img
