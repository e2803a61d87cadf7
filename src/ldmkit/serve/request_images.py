"""The images a request may carry (img2img's start image, inpainting's mask): base64 PNG,
JPEG or WebP text, as a data URL (`data:image/png;base64,...`, what a browser canvas gives) or bare.

The server takes them at the model's own size only. `ldm generate --init-image` takes any size
that is a multiple of the model's downsampling, but a compiled server would then compile once
per size a client invents; the page scales and crops an upload to the model's size before it
sends it.
"""

from __future__ import annotations

import binascii
import io
from base64 import b64decode
from collections.abc import Mapping
from typing import Any

from PIL import Image, UnidentifiedImageError

from ldmkit.errors import UserError

FORMATS = ("PNG", "JPEG", "WEBP")


def request_image(request: Mapping[str, Any], key: str, size: int) -> Image.Image | None:
    """The image under `key` (None when absent), checked to be `size` x `size` pixels."""
    value = request.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UserError(f"{key} must be a base64 PNG, JPEG or WebP image (a data: URL or bare base64), "
                        f"got {type(value).__name__}")
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise UserError(f"{key} must be a base64 data URL (data:image/png;base64,...)")
    try:
        data = b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{key} is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, OSError, SyntaxError):  # PIL: SyntaxError for some broken PNG chunks
        raise UserError(f"{key} is not a PNG, JPEG or WebP image") from None
    except Image.DecompressionBombError:  # a header claiming billions of pixels
        raise UserError(f"{key} claims too many pixels to be opened") from None
    if image.size != (size, size):  # checked from the header, before the pixels are decoded
        width, height = image.size
        raise UserError(f"{key} is {width}x{height} px; this model takes {size}x{size} (scale or crop it first)")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError):
        raise UserError(f"{key} could not be decoded (a truncated or damaged file?)") from None
    return image
