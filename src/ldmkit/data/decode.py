"""Decoding image files into square uint8 tensors: any PIL mode -> RGB, resize, centre crop.

Image files in the wild come in many modes. The rules here:

- Transparency (RGBA, LA, PA, palette or RGB/L with a `transparency` key) is composited on
  white: the colour of a fully transparent pixel is arbitrary (often black or garbage), so
  dropping alpha would paint it into the training data.
- 16-bit greyscale (`I;16*`, and `I`, which is how PIL reads 16-bit PNG/TIFF) is scaled by
  1/257 to 8 bits; PIL's own `convert("L")` clips at 255 instead, which turns most of a
  16-bit image white. Mode `I` also holds 32-bit integer TIFFs: values beyond 16 bits (or
  below 0) are scaled from the image's own range instead, [min(lowest, 0), highest] -> [0, 255].
- Float greyscale (`F`, 32-bit float TIFF) has no range in its header: values within [0, 1]
  are scaled by 255, values within [0, 255] kept, and others scaled from the image's own range
  as above; NaN reads as 0.
- CMYK, YCbCr, 1-bit, palette and greyscale go through PIL's `convert("RGB")`.
- EXIF orientation is applied, so phone photos are upright.

Very large images: PIL warns above `Image.MAX_IMAGE_PIXELS` and refuses above twice that (its
guard against decompression bombs). Its warning names PIL's source file, not the image, so
`inspect_image_file` reports the pixel count instead and the folder loader says which files
were large or too large in its own words; `quiet_large_images` keeps PIL's warning out.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".tga")
# Read where this Pillow has the plugin (AVIF is built into recent wheels, QOI from 9.5, HEIC into none);
# skipped with a warning where it has not, as are cameras' raw files (an iPhone's .heic photos
# vanished from a training set without a word).
_PLUGIN_EXTENSIONS = (".avif", ".qoi", ".heic", ".heif", ".jxl")
_RAW_EXTENSIONS = (".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2")

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def is_image_file(path: Path) -> bool:
    """True when the file name has one of the supported image extensions (any case)."""
    suffix = path.suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in _plugin_extensions_read()


def is_unreadable_image_file(path: Path) -> bool:
    """True for a photo format this installation cannot read (HEIC without pillow-heif, raw files)."""
    suffix = path.suffix.lower()
    return suffix in _RAW_EXTENSIONS or (suffix in _PLUGIN_EXTENSIONS and suffix not in _plugin_extensions_read())


@functools.cache
def _plugin_extensions_read() -> frozenset[str]:
    return frozenset(_PLUGIN_EXTENSIONS) & set(Image.registered_extensions())  # loads PIL's plugins once


class ImageCheck(NamedTuple):
    """What `inspect_image_file` found: `pixels` is width x height, 0 when unknown."""

    readable: bool
    pixels: int = 0
    too_large: bool = False  # over PIL's decompression-bomb limit: refused, not broken


def large_image_limit() -> int | None:
    """Pixel count above which PIL warns (twice this, it refuses); None when switched off."""
    return Image.MAX_IMAGE_PIXELS


@contextlib.contextmanager
def quiet_large_images() -> Iterator[None]:
    """Keep PIL's `DecompressionBombWarning` out while opening files whose size ldmkit reports
    itself. Not for threads that may leave the block in any order (it swaps the global filters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _bomb_pixels(error: Exception) -> int:
    # PIL refuses before handing back the image, so its message is the only place the size is.
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found.group(1)) if found else 0


def inspect_image_file(path: str | Path) -> ImageCheck:
    """Cheap validity check, used once per file at dataset construction.

    Reads the header and, where PIL supports it (PNG), walks the chunks checking CRCs,
    which catches truncated files without decoding pixels; a JPEG without its end marker is
    decoded at 1/8 scale (a truncated JPEG passes the header check). Never raises. PIL's own warning
    about a large image is not silenced here: wrap calls in `quiet_large_images`.
    """
    try:
        with Image.open(path) as image:
            pixels, form = image.width * image.height, image.format
            image.verify()
        if form == "JPEG" and not _ends_like_jpeg(path):
            _decode_small(path)  # no end marker: an interrupted download, or a trailer after it
        return ImageCheck(True, pixels)
    except Image.DecompressionBombError as error:
        return ImageCheck(False, _bomb_pixels(error), too_large=True)
    except Exception:  # any other failure (not an image, truncated, I/O) means "skip it"
        return ImageCheck(False)


def _ends_like_jpeg(path: str | Path) -> bool:
    """Whether the file ends with JPEG's end-of-image marker (a truncated JPEG passes `verify`)."""
    with open(path, "rb") as file:
        file.seek(max(0, os.path.getsize(path) - 64))
        return file.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _decode_small(path: str | Path) -> None:
    """Decode the file at 1/8 scale (JPEG's cheapest): raises where the data ends too early."""
    with Image.open(path) as image:
        image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any common mode to 8-bit RGB (rules in the module docstring)."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        return _gray_array_to_rgb(_eight_bit_levels(np.asarray(image), image.mode))
    if image.mode in _ALPHA_MODES or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def mask_levels(image: Image.Image) -> np.ndarray:
    """A mask's grey levels [H, W] uint8 (white = paint): transparency on black, so a white shape on
    a transparent layer paints the shape only (on white, as `to_rgb` puts images, it painted all);
    16-bit and float masks scaled as `to_rgb` scales them (PIL's convert clipped 16-bit grey to white)."""
    if image.mode in _ALPHA_MODES or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("L"))
    return np.asarray(to_rgb(image).convert("L"))


def _eight_bit_levels(values: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image's values on the 0..255 scale (module docstring)."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        return values * 255.0  # a float image in [0, 1]
    if mode == "F" and lo >= 0.0 and hi <= 255.0:
        return values  # a float image in [0, 255]
    if mode != "F" and lo >= 0.0 and hi <= 65535.0:
        return values / 257.0  # 16 bits: 65535 -> 255
    low = min(lo, 0.0)  # other ranges: the image's own, never clipped
    return (values - low) * (255.0 / (hi - low)) if hi > low else np.zeros_like(values)


def _gray_array_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` and crop the centre square, in one resampling.

    Resizing only the central square (`box=`) equals resize-then-crop but skips the pixels
    that would be cropped away. Palette and 1-bit images are converted first (RGB, RGBA where
    they have transparency, L), so they are averaged as training's RGB images are. BICUBIC in
    PIL is antialiased (its kernel widens when shrinking); `reducing_gap=3` first box-reduces
    huge photos by an integer factor, which PIL documents as indistinguishable from a full resample and is much faster.
    """
    width, height = image.size
    if (width, height) == (size, size):
        return image
    if image.mode in ("1", "P", "PA"):  # PIL resizes these by nearest neighbour: a 1-px checkerboard went black
        transparent = image.mode == "PA" or image.info.get("transparency") is not None
        image = image.convert("RGBA" if transparent else "L" if image.mode == "1" else "RGB")
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def _open(path: str | Path, known_large: bool) -> Image.Image:
    if not known_large:
        return Image.open(path)  # no filter swap per image: it would reset "warn once" everywhere
    with quiet_large_images():
        return Image.open(path)


def load_image(path: str | Path, image_size: int, channels: int = 3, *, known_large: bool = False) -> torch.Tensor:
    """Decode one file (first frame of animations) to uint8 `[channels, size, size]`.

    Raises whatever PIL raises for a broken file; callers decide how to recover.
    `known_large`: the caller already reported this image as large, so PIL's warning is kept out.
    """
    with _open(path, known_large) as image:
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
