"""Preview images written during training: sample grids and VAE reconstructions.

Sample grids use fixed seeds, so the grids of successive steps show the same noise being
denoised by an improving model: one row per class (the first 10 classes at most),
classifier-free guidance when the model is class-conditional.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

from ldmkit.data.images import make_grid, save_png
from ldmkit.diffusion import NoiseSchedule, SeededNoise, class_guidance, sample

MAX_ROWS = 10


@torch.no_grad()
def generate_latents(
    unet: nn.Module,
    schedule: NoiseSchedule,
    *,
    seeds: list[int],
    latent_shape: tuple[int, int, int],
    labels: torch.Tensor | None,
    guidance: float,
    prediction: str,
    steps: int,
    sampler: str = "dpmpp-2m",
    callback: Callable | None = None,
) -> torch.Tensor:
    """Latents for `seeds` (one image per seed), guided towards `labels` if given; `callback` is
    the sampler's, called after each step."""
    device = next(unet.parameters()).device
    noise = SeededNoise(seeds, latent_shape, device=device)
    num_classes = getattr(unet.config, "num_classes", None)
    if labels is not None and num_classes:
        denoiser = class_guidance(unet, labels, num_classes, guidance)
    else:
        denoiser = lambda x, t: unet(x, t)  # noqa: E731
    return sample(denoiser, None, schedule, sampler=sampler, steps=steps, prediction=prediction, noise=noise,
                  callback=callback)


class _GridStopped(Exception):
    """Raised from the sampler's callback to leave a grid a stop was asked for during."""


@torch.no_grad()
def save_sample_grid(
    path: Path,
    unet: nn.Module,
    vae: nn.Module,
    schedule: NoiseSchedule,
    *,
    latent_shape: tuple[int, int, int],
    num_classes: int,
    per_row: int,
    guidance: float,
    prediction: str,
    steps: int,
    autocast: ContextManager,
    stopped: Callable[[], bool] | None = None,
) -> Path | None:
    """Decode a grid of samples to `path`: a row per class (or 4 rows if unconditional).

    `stopped`, asked after each sampler step: when it says True the grid is left unfinished and
    nothing is written (None returned): a grid takes tens of seconds on a CPU, too long to keep
    a user who pressed Ctrl-C waiting for a preview."""
    device = next(unet.parameters()).device
    rows = min(num_classes, MAX_ROWS) if num_classes else 4
    labels = torch.arange(rows, device=device).repeat_interleave(per_row) if num_classes else None

    def check(step: int, t: object, x: torch.Tensor) -> None:
        if stopped is not None and stopped():
            raise _GridStopped

    try:
        with autocast:
            z = generate_latents(unet, schedule, seeds=list(range(rows * per_row)), latent_shape=latent_shape,
                                 labels=labels, guidance=guidance, prediction=prediction, steps=steps,
                                 callback=check)
            images = vae.decode(z).float().clamp(-1, 1)
    except _GridStopped:
        return None
    return save_png(make_grid(images, nrow=per_row), path)


@torch.no_grad()
def save_reconstructions(path: Path, vae: nn.Module, images: torch.Tensor) -> Path:
    """Originals (top row) above their reconstructions through the posterior mean."""
    recon = vae.decode_raw(vae.posterior(images).mean).float().clamp(-1, 1)
    return save_png(make_grid(torch.cat([images, recon]), nrow=images.shape[0]), path)
