"""The LPIPS perceptual loss, used only when its weights are already on this machine.

Training must work offline and never download: LPIPS (Zhang et al. 2018) needs the `lpips`
package *and* torchvision's ImageNet VGG16 weights in the torch hub cache. If either is
missing the VAE stage trains without it and says so once.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _vgg_weights_cached() -> bool:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return any(checkpoints.glob("vgg16-*.pth"))


def load_perceptual_loss(device: torch.device) -> tuple[nn.Module | None, str]:
    """(frozen LPIPS-VGG module or None, a one-line explanation for the log)."""
    try:
        import lpips  # type: ignore[import-not-found]
    except Exception:
        return None, "perceptual loss off: the 'lpips' package is not installed"
    if not _vgg_weights_cached():
        return None, "perceptual loss off: no VGG16 weights in the torch hub cache (nothing is downloaded)"
    try:
        model = lpips.LPIPS(net="vgg", verbose=False)
    except Exception as e:  # weights unreadable, version mismatch: train on without it
        return None, f"perceptual loss off: LPIPS failed to load ({type(e).__name__})"
    model = model.to(device).eval().requires_grad_(False)
    return model, "perceptual loss on: LPIPS (VGG16)"
