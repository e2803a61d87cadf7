"""Parameter counts of the benchmark configs C1/C2/C3 (docs: /work/shared/BENCHMARKS.md) and presets.

Models are built on the `meta` device: no memory, no init time. Each count is checked against
the number measured once from diffusers 0.42.1 (so the test can fail without diffusers) and, when
diffusers is importable, against diffusers itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.presets import UNET_PRESETS, VAE_PRESETS
from ldmkit.models.unet import UNet

# Measured with diffusers 0.42.1 (the same configs as `_diffusers_model` below).
C1_PARAMS = 90_049_924
C2_PARAMS = 859_520_964
C3_PARAMS = 83_653_863


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ldmkit_model(name: str) -> nn.Module:
    with torch.device("meta"):
        if name == "C1":
            # diffusers' num_class_embeds=1000 = 999 classes + ldmkit's null-class row.
            return UNet(UNET_PRESETS["base"](num_classes=999))
        if name == "C2":
            return UNet(UNET_PRESETS["sd15"]())
        return AutoencoderKL(VAE_PRESETS["sd"]())


def _diffusers_model(name: str) -> nn.Module:
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        if name == "C1":
            return diffusers.UNet2DModel(
                sample_size=32, in_channels=4, out_channels=4, block_out_channels=(128, 256, 384, 512),
                layers_per_block=2,
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=64, num_class_embeds=1000,
            )
        if name == "C2":
            return diffusers.UNet2DConditionModel(cross_attention_dim=768)
        return diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, latent_channels=4,
        )


EXPECTED = {"C1": C1_PARAMS, "C2": C2_PARAMS, "C3": C3_PARAMS}


@pytest.mark.parametrize("name", EXPECTED)
def test_benchmark_config_counts(name: str) -> None:
    assert count(_ldmkit_model(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", EXPECTED)
def test_benchmark_config_counts_match_diffusers(name: str) -> None:
    ours, theirs = _ldmkit_model(name), _diffusers_model(name)
    assert count(ours) == count(theirs)
    # Same tensors, not only the same total: compare the multiset of parameter shapes.
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in theirs.parameters())


@pytest.mark.parametrize(
    "registry,name,low,high",
    [
        ("unet", "tiny", 1e6, 3e6),
        ("unet", "small", 10e6, 30e6),
        ("vae", "tiny", 0.5e6, 1.5e6),
        ("vae", "small", 2e6, 20e6),
    ],
)
def test_preset_sizes(registry: str, name: str, low: float, high: float) -> None:
    with torch.device("meta"):
        model = UNet(UNET_PRESETS[name]()) if registry == "unet" else AutoencoderKL(VAE_PRESETS[name]())
    assert low <= count(model) <= high
