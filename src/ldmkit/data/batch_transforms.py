"""Whole-batch operations on uint8 image tensors `[N, C, H, W]` for the in-memory datasets.

Built-in datasets are resized once at load time, in chunks, rather than per item per epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Resizing 60k images at once would need a float copy of the whole set; chunks bound memory.
_CHUNK = 4096


def resize_uint8_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize square uint8 images to `size` x `size`: bicubic, antialiased when shrinking."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    chunks = []
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start : start + _CHUNK].to(torch.float32)
        # antialias=True widens the kernel on downscale (like PIL), so no aliasing moire.
        chunk = F.interpolate(chunk, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        chunks.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks) if chunks else images.new_empty(0, images.shape[1], size, size)


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
