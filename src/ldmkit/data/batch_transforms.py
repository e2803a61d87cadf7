"""Whole-batch operations on uint8 image tensors `[N, C, H, W]` for the in-memory datasets.

Built-in datasets are resized once at load time rather than per item per epoch. The work goes
in chunks into one preallocated uint8 result: bicubic resizing needs float32 copies (4 bytes a
value where the result keeps 1), and a whole dataset's float copy at a large size does not fit
(1,815 emoji at 1000 px: 22 GB for a 5.4 GB result). Peak memory is the result plus one chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# float32 bytes (a chunk's input and output copies together) worked on at once: small beside any
# dataset worth chunking, and large enough that per-chunk overhead is noise (the emoji set's 1,815
# images of 64 px are one chunk up to 90 px, two at 128 px; at 1000 px a chunk is 22 images).
CHUNK_BYTES = 256 * 2**20


def _float_bytes_per_image(images: torch.Tensor, size: int, channels: int | None) -> int:
    c, h, w = images.shape[1:]
    return 4 * (c * h * w + max(c, channels or c) * size * size)


def chunk_length(images: torch.Tensor, size: int, channels: int | None = None) -> int:
    """How many images of `images` to transform at once into `channels` x `size` x `size`."""
    return max(1, CHUNK_BYTES // _float_bytes_per_image(images, size, channels))


def working_bytes(images: torch.Tensor, size: int, channels: int) -> int:
    """The scratch memory `fit_uint8_images` needs beside its result: one chunk's float copies."""
    count = min(images.shape[0], chunk_length(images, size, channels))
    return count * _float_bytes_per_image(images, size, channels)


def _resize_chunk(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    chunk = images.to(torch.float32)
    # antialias=True widens the kernel on downscale (like PIL), so no aliasing moire.
    chunk = F.interpolate(chunk, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return chunk.round_().clamp_(0, 255).to(torch.uint8)


def resize_uint8_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize square uint8 images to `size` x `size`: bicubic, antialiased when shrinking."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return fit_uint8_images(images, size, images.shape[1])


def fit_uint8_images(
    images: torch.Tensor,
    size: int,
    channels: int,
    fit: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`fit(chunk, size)` (default: the bicubic resize) then `convert_channels`, chunk by chunk,
    into one uint8 `[N, channels, size, size]`: peak memory is that plus one chunk."""
    fit = fit or _resize_chunk
    out = torch.empty((images.shape[0], channels, size, size), dtype=torch.uint8, device=images.device)
    step = chunk_length(images, size, channels)
    for start in range(0, images.shape[0], step):
        chunk = images[start : start + step]
        out[start : start + step] = convert_channels(fit(chunk, size), channels)
    return out


def pad_uint8_images(images: torch.Tensor, size: int, value: int = 0) -> torch.Tensor:
    """Centre square images on a `size` x `size` canvas filled with `value`."""
    margin = size - images.shape[-1]
    if margin < 0 or margin % 2:
        raise ValueError(f"cannot pad {images.shape[-1]} px evenly to {size} px")
    half = margin // 2
    return F.pad(images, (half, half, half, half), value=value)


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[N, 3, H, W]` -> `[N, 1, H, W]` with ITU-R 601 luma weights (what PIL's "L" uses)."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    gray = (images.to(torch.float32) * weights).sum(dim=1, keepdim=True)
    return gray.round_().clamp_(0, 255).to(torch.uint8)


def gray_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[N, 1, H, W]` -> `[N, 3, H, W]` by repeating the channel."""
    return images.expand(-1, 3, -1, -1).contiguous()


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert uint8 images between 1 and 3 channels; a no-op when they already match."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 3 and channels == 1:
        return rgb_to_gray(images)
    if images.shape[1] == 1 and channels == 3:
        return gray_to_rgb(images)
    raise ValueError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")
