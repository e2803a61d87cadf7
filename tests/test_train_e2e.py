"""Acceptance test of `ldm train`: a class-conditional model learns one colour per class.

A generated folder of solid-colour images (red, green, blue, yellow, with a little
brightness jitter) trains through the whole pipeline with the `tiny` preset (steps shrunk
for a CPU test): VAE stage, latent cache, diffusion stage, inference file. Images generated
per class from RUN/model.safetensors must have a mean colour closest to their class's.

The helpers here are shared with the other trainer tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.models import UNET_PRESETS, VAE_PRESETS
from ldmkit.train import RunConfig, apply_overrides, load_inference_file, preset_config, run_training
from ldmkit.train.config import make_schedule
from ldmkit.train.previews import generate_latents

@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread: on a shared CPU, OpenMP threads that wait for each other spin
    and make a step several times slower. The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_color_dataset(root: Path, *, per_class: int = 16, size: int = 16, seed: int = 0) -> Path:
    """A class-per-subfolder dataset of solid-colour PNGs: +-10% brightness per image and a
    little pixel noise (perfectly flat images are a degenerate input for GroupNorm layers)."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLORS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            value = np.array(rgb) * rng.uniform(0.9, 1.1) + rng.normal(0, 12, (size, size, 3))
            Image.fromarray(np.clip(value, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def micro_config(data: Path, *, vae_steps: int, steps: int, batch_size: int = 8) -> RunConfig:
    """A seconds-long run: 8 px images, an f2 VAE and a two-level UNet of ~100k parameters."""
    config = preset_config("tiny")
    apply_overrides(config, dict(
        data=str(data), image_size=8, num_workers=0, quiet=True, log_every=1, checkpoint_every=1000,
        vae_steps=vae_steps, vae_batch_size=batch_size, steps=steps, batch_size=batch_size,
        sample_every=0, val_every=0, warmup=2, **{"vae.warmup": 2, "vae.latent_stats_images": 64},
    ))
    config.vae.model = VAE_PRESETS["tiny"](block_channels=(8, 16), norm_groups=4, mid_attention=False).to_dict()
    config.diffusion.model = UNET_PRESETS["tiny"](base_channels=16, channel_mult=(1, 2), attention_levels=(1,),
                                                  head_dim=16, norm_groups=4).to_dict()
    return config


def test_tiny_preset_learns_class_colours(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=24, size=16)
    config = preset_config("tiny")
    apply_overrides(config, dict(
        data=str(data), image_size=16, quiet=True, num_workers=0, vae_steps=150, vae_batch_size=8,
        steps=300, batch_size=32, sample_every=0, val_every=0, checkpoint_every=1000, log_every=50,
        **{"vae.latent_stats_images": 96},
    ))
    run = run_training(config, tmp_path / "run")

    unet, vae, meta = load_inference_file(run, "cpu")
    assert meta["class_names"] == sorted(COLORS)
    assert meta["image_size"] == 16 and meta["channels"] == 3 and meta["step"] == 300
    schedule = make_schedule(RunConfig.from_dict(meta["run_config"]).diffusion)
    per_class = 4
    labels = torch.arange(len(COLORS)).repeat_interleave(per_class)
    with torch.no_grad():
        z = generate_latents(unet, schedule, seeds=list(range(len(labels))), latent_shape=(4, 4, 4),
                             labels=labels, guidance=2.0, prediction=meta["prediction"], steps=20)
        images = vae.decode(z).clamp(-1, 1)
    mean_rgb = ((images + 1) * 127.5).mean(dim=(2, 3)).view(len(COLORS), per_class, 3).mean(1)  # [classes, 3]
    targets = torch.tensor([COLORS[name] for name in meta["class_names"]], dtype=torch.float32)
    distances = torch.cdist(mean_rgb, targets)  # [generated class, colour]
    assert distances.argmin(dim=1).tolist() == list(range(len(COLORS))), (mean_rgb, distances)
