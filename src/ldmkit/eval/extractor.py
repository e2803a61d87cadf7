"""The one interface every feature extractor of `ldm eval` follows.

An extractor turns uint8 images `[N, C, H, W]` into float features `[N, D]`. It owns its
preprocessing (resizing, normalisation, channel handling), runs in batches on its device,
and returns features on the CPU so metrics never care where the network ran.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F

from ldmkit.device import resolve_device
from ldmkit.errors import UserError

__all__ = ["FeatureExtractor", "check_uint8_images", "resolve_device", "to_rgb", "resize"]


def check_uint8_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Check that `images` is a uint8 tensor `[N, C, H, W]` with 1 or 3 channels."""
    if not isinstance(images, torch.Tensor):
        raise UserError(f"{what} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise UserError(f"{what} must be uint8 in [0, 255], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"{what} must have shape [N, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise UserError(f"{what} is empty")
    return images


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Repeat a grayscale batch `[N, 1, H, W]` to 3 channels; RGB passes through."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float batch to `size` x `size`.

    antialias=True low-pass filters when shrinking (otherwise large images alias); for
    the usual case of enlarging 28-64 px images it is plain bilinear interpolation.
    """
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class FeatureExtractor(abc.ABC):
    """Maps uint8 images `[N, C, H, W]` to float32 features `[N, D]` (on the CPU).

    Subclasses set `name` (used in metric names such as `FD_<name>`), `dim`, and implement
    `_features(batch)` on a uint8 batch already on `self.device`.
    """

    name: str = "features"
    dim: int = 0

    def __init__(self, device: torch.device | str | None = None, batch_size: int = 256) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.batch_size = batch_size

    @abc.abstractmethod
    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """Features `[B, D]` of one uint8 batch `[B, C, H, W]` on `self.device`."""

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features `[N, D]` (float32, CPU) of uint8 images `[N, C, H, W]`, batch by batch."""
        check_uint8_images(images)
        chunks = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device, non_blocking=True)
            chunks.append(self._features(batch).float().cpu())
        return torch.cat(chunks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device})"
