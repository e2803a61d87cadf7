"""The tiny random class-conditional models several test files build (seeded, CPU, 16 px)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldmkit.diffusion import NoiseSchedule
from ldmkit.models import AutoencoderKL, UNet
from ldmkit.models.presets import UNET_PRESETS, VAE_PRESETS
from ldmkit.train.inference_file import save_inference_file


def tiny_class_models(num_classes: int, seed: int = 0) -> tuple[AutoencoderKL, UNet]:
    """A `tiny` f4 VAE and a two-level tiny UNet with a non-zero output layer (so samples depend
    on the network, as after training); no classes: unconditional."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(VAE_PRESETS["tiny"]())
    unet = UNet(UNET_PRESETS["tiny"](num_classes=num_classes or None, channel_mult=(1, 2), attention_levels=(1,),
                                     zero_init_output=False))
    return vae, unet


def save_tiny_class_model(path: Path, class_names: list[str], **extra: Any) -> Path:
    """`tiny_class_models` written as `ldm train`'s inference file for 16 px images."""
    vae, unet = tiny_class_models(len(class_names))
    save_inference_file(path, unet=unet, vae=vae, run_config={"image_size": 16, "data": "synthetic"},
                        extra={"class_names": list(class_names),
                               "schedule": NoiseSchedule.create("scaled_linear").to_dict(), **extra})
    return path
