"""The latent normalisation is measured on what the diffusion stage trains on: with flips on,
each image and its mirror, half each. Measured on unmirrored images only, data with a left and a
right (text, faces in profile) gave the UNet latents whose mean and variance were off 0 and 1."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from ldmkit.train import run_training
from test_train_e2e import micro_config, one_thread  # noqa: F401 (autouse fixture)


def _write_left_right_dataset(root, count=24, size=8, seed=0):
    """Images dark on the left and light on the right, never the other way round."""
    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 255, size)[None, :, None]
    for i in range(count):
        value = ramp * rng.uniform(0.6, 1.0, 3) + rng.normal(0, 10, (size, size, 3))
        Image.fromarray(np.clip(value, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def test_normalised_latents_have_unit_moments_over_both_orientations(tmp_path):
    data = _write_left_right_dataset(tmp_path / "data")
    config = micro_config(data, vae_steps=6, steps=1)
    assert config.flip and config.vae.latent_stats_images >= 24  # every training image is measured
    run = run_training(config, tmp_path / "run")
    cache = load_file(str(run / "latents.safetensors"))
    means = torch.cat([cache["train.mean"], cache["train.mean_flip"]]).double()  # normalised: (mu - shift) * scale
    stds = torch.cat([cache["train.std"], cache["train.std_flip"]]).double()
    mean = means.mean(dim=(0, 2, 3))
    variance = (means.pow(2) + stds.pow(2)).mean(dim=(0, 2, 3)) - mean.pow(2)  # of z ~ q(z|x), the posterior mixture
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4), mean
    assert torch.allclose(variance, torch.ones_like(variance), atol=1e-4), variance
    # the orientations differ: measured on one alone, the normalisation would miss the mixture
    one_side = cache["train.mean"].double().mean(dim=(0, 2, 3))
    assert (one_side - mean).abs().max() > 1e-2
