"""Image thumbnails with Pillow: bytes in as base64, a smaller image out as base64."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from ..base import progress
from ..registry import task

#: Decoded images larger than this many pixels are refused (decompression bombs).
MAX_PIXELS = 50_000_000
FORMATS = ("PNG", "JPEG", "WEBP")


class BadImage(ValueError):
    """The bytes are not an image Pillow can read, or the image is too large."""


@task(
    "images.thumbnail",
    schema={
        "properties": {
            "image_b64": {"type": "string", "minLength": 1, "contentEncoding": "base64"},
            "max_size": {"type": "integer", "minimum": 1, "maximum": 4096},
            "format": {"enum": list(FORMATS)},
        },
        "required": ["image_b64"],
    },
    time_limit=60,
    soft_time_limit=50,
)
def thumbnail(image_b64: str, max_size: int = 128, format: str = "PNG") -> dict[str, object]:
    """Shrink an image to fit ``max_size`` by ``max_size``, keeping its aspect ratio."""
    try:
        raw = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImage(f"image_b64 is not valid base64: {exc}") from None
    progress(10, "decoding")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            opened.load()
            original = opened.size
            progress(50, "resizing")
            opened.thumbnail((max_size, max_size))
            img: Image.Image = opened
            if format == "JPEG" and img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            out = io.BytesIO()
            img.save(out, format=format)
            size = img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise BadImage(f"cannot read image: {exc}") from None
    progress(100, "done")
    return {
        "format": format,
        "width": size[0],
        "height": size[1],
        "original_width": original[0],
        "original_height": original[1],
        "image_b64": base64.b64encode(out.getvalue()).decode(),
    }
