"""Decoding image files into square uint8 tensors: any PIL mode -> RGB, resize, centre crop.

Image files in the wild come in many modes. The rules here:

- Transparency (RGBA, LA, PA, palette or RGB/L with a `transparency` key) is composited on
  white: the colour of a fully transparent pixel is arbitrary (often black or garbage), so
  dropping alpha would paint it into the training data.
- 16-bit greyscale (`I;16*`, and `I`, which is how PIL reads 16-bit PNG/TIFF) is scaled by
  1/257 to 8 bits; PIL's own `convert("L")` clips at 255 instead, which turns most of a
  16-bit image white.
- CMYK, YCbCr, 1-bit, palette and greyscale go through PIL's `convert("RGB")`.
- EXIF orientation is applied, so phone photos are upright.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def is_image_file(path: Path) -> bool:
    """True when the file name has one of the supported image extensions (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def check_image_file(path: str | Path) -> bool:
    """Cheap validity check, used once per file at dataset construction.

    Reads the header and, where PIL supports it (PNG), walks the chunks checking CRCs,
    which catches truncated files without decoding pixels. Never raises.
    """
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # any failure (not an image, truncated, bomb, I/O) means "skip it"
        return False


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any common mode to 8-bit RGB (rules in the module docstring)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32) / 257.0  # 65535 -> 255
        return _gray_array_to_rgb(values)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        # Float images are stored either in [0, 1] or in [0, 255]; there is no header to say.
        if values.size and float(np.nanmax(values)) <= 1.0:
            values = values * 255.0
        return _gray_array_to_rgb(np.nan_to_num(values))
    if image.mode in _ALPHA_MODES or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _gray_array_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` and crop the centre square, in one resampling.

    Resizing only the central square (`box=`) equals resize-then-crop but skips the pixels
    that would be cropped away. BICUBIC in PIL is antialiased (its kernel widens when
    shrinking); `reducing_gap=3` first box-reduces huge photos by an integer factor, which
    PIL documents as indistinguishable from a full resample and is much faster.
    """
    width, height = image.size
    if (width, height) == (size, size):
        return image
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def load_image(path: str | Path, image_size: int, channels: int = 3) -> torch.Tensor:
    """Decode one file (first frame of animations) to uint8 `[channels, size, size]`.

    Raises whatever PIL raises for a broken file; callers decide how to recover.
    """
    with Image.open(path) as image:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; ask for the smallest scale that
        # still leaves the shorter side >= image_size, so big photos decode much faster.
        scale = image_size / max(1, min(image.size))
        if scale < 1:
            image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        upright = ImageOps.exif_transpose(image)  # loads the pixels; returns a new image
    rgb = resize_center_crop(to_rgb(upright), image_size)
    if channels == 1:
        array = np.array(rgb.convert("L"))[:, :, None]
    else:
        array = np.array(rgb)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
