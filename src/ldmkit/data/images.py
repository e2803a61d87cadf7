"""Turning model outputs (`[-1, 1]` tensors) into 8-bit pixels, PIL images, grids and PNGs."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldmkit.atomic import atomic_write
from ldmkit.thread_map import map_in_threads

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """`[-1, 1]` float images (any shape) -> uint8 `[0, 255]`, rounded, out-of-range clamped.

    uint8 input is returned unchanged, so callers may pass either. Stays on its device.
    """
    if images.dtype == torch.uint8:
        return images
    scaled = (images.detach().to(torch.float32) + 1.0) * 127.5
    return scaled.round_().clamp_(0, 255).to(torch.uint8)


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in _MODES:
        raise ValueError(f"expected images [N, C, H, W] or [C, H, W] with C in 1, 3, 4; got {list(images.shape)}")
    return images


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """`[N, C, H, W]` (or `[C, H, W]`) images in `[-1, 1]` or uint8 -> PIL images.

    1 channel gives mode "L", 3 "RGB", 4 "RGBA".
    """
    pixels = to_uint8(_as_batch(images)).cpu().permute(0, 2, 3, 1).numpy()  # NCHW -> NHWC
    if pixels.shape[-1] == 1:
        return [Image.fromarray(np.ascontiguousarray(p[:, :, 0])) for p in pixels]
    return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


def make_grid(
    images: torch.Tensor | Sequence[Image.Image],
    nrow: int = 8,
    *,
    padding: int = 2,
    pad_value: int = 255,
) -> Image.Image:
    """Tile images into one PIL image, `nrow` images per row, `padding` px between and around.

    `images` is a tensor as for `to_pil`, or a list of PIL images of one size and mode.
    """
    if isinstance(images, torch.Tensor):
        images = to_pil(images)
    if len(images) == 0:
        raise ValueError("make_grid needs at least one image")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    first = images[0]
    if any(image.size != first.size or image.mode != first.mode for image in images):
        raise ValueError("make_grid needs images of one size and mode")
    columns = min(nrow, len(images))
    rows = math.ceil(len(images) / columns)
    width, height = first.size
    fill = pad_value if first.mode == "L" else (pad_value,) * len(first.mode)
    grid_size = (columns * (width + padding) + padding, rows * (height + padding) + padding)
    grid = Image.new(first.mode, grid_size, fill)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(image, (padding + column * (width + padding), padding + row * (height + padding)))
    return grid


def save_png(image: Image.Image | torch.Tensor, path: str | os.PathLike, pnginfo: Any = None) -> Path:
    """Write a PNG atomically: readers see the old file or the whole new one, never half.

    `image` is a PIL image or one `[C, H, W]` tensor in `[-1, 1]` / uint8; `pnginfo` PIL's text
    chunks. Parent folders are created (see `ldmkit.atomic`). Returns the path written.
    """
    if isinstance(image, torch.Tensor):
        batch = _as_batch(image)
        if batch.shape[0] != 1:
            raise ValueError(f"save_png takes one image, got {batch.shape[0]}; use make_grid for a batch")
        image = to_pil(batch)[0]
    return atomic_write(path, lambda handle: image.save(handle, format="PNG", pnginfo=pnginfo))


def png_bytes(images: Sequence[Image.Image], threads: int = 4) -> list[bytes]:
    """Each image as the bytes of a PNG file, in order, encoded on up to `threads` threads (zlib
    releases the GIL: a 512 px image takes tens of milliseconds to compress)."""
    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    return map_in_threads(encode, images, threads, "ldm-png")
