"""Named architectures: `UNET_PRESETS[name](**overrides) -> UNetConfig`, same for `VAE_PRESETS`.

Every preset is a function (as DiT's `DiT_models` registry), so keyword overrides replace any
field, e.g. `UNET_PRESETS["tiny"](in_channels=4, num_classes=10)`. Parameter counts below are
for the default fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ldmkit.errors import UserError
from ldmkit.models.autoencoder import AutoencoderKLConfig
from ldmkit.models.unet_config import UNetConfig


def _build(cls: type, defaults: dict[str, Any], overrides: dict[str, Any], preset: str) -> Any:
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"preset {preset!r}: unknown {cls.__name__} field(s): {', '.join(unknown)}")
    merged = {**defaults, **overrides}
    # Overriding only one of num_heads / head_dim must clear the other, or validation trips.
    if "num_heads" in overrides and "head_dim" not in overrides and overrides["num_heads"] is not None:
        merged["head_dim"] = None
    if "head_dim" in overrides and "num_heads" not in overrides and overrides["head_dim"] is not None:
        merged["num_heads"] = None
    return cls(**merged)


def unet_tiny(**overrides: Any) -> UNetConfig:
    """~1.2M params: CPU-trainable in minutes on 8x8 or 16x16 latents."""
    defaults = dict(
        in_channels=4, out_channels=4, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
        attention_levels=(1, 2), head_dim=32, norm_groups=8,
    )
    return _build(UNetConfig, defaults, overrides, "tiny")


def unet_small(**overrides: Any) -> UNetConfig:
    """~16M params: 16x16 or 32x32 latents on one GPU."""
    defaults = dict(
        in_channels=4, out_channels=4, base_channels=64, channel_mult=(1, 2, 4), num_res_blocks=2,
        attention_levels=(1, 2), head_dim=32, norm_groups=32,
    )
    return _build(UNetConfig, defaults, overrides, "small")


def unet_base(**overrides: Any) -> UNetConfig:
    """Benchmark config C1 (~90M params): channels (128, 256, 384, 512), 2 ResNets per level,
    self-attention at levels 1-3 and in the middle, 64 channels per head.

    diffusers' `UNet2DModel(..., num_class_embeds=1000)` equals `num_classes=999` here: ldmkit
    reserves the last row of the class table as the null class for guidance. Pass the dataset's
    class count as `num_classes`.
    """
    defaults = dict(
        in_channels=4, out_channels=4, base_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
        attention_levels=(1, 2, 3), head_dim=64, norm_groups=32,
    )
    return _build(UNetConfig, defaults, overrides, "base")


def unet_sd15(**overrides: Any) -> UNetConfig:
    """Benchmark config C2 (~860M params): the Stable Diffusion 1.x UNet, channels
    (320, 640, 1280, 1280), 8 heads everywhere, cross-attention to a 768-wide text context at
    levels 0-2 and in the middle."""
    defaults = dict(
        in_channels=4, out_channels=4, base_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
        attention_levels=(0, 1, 2), num_heads=8, head_dim=None, context_dim=768, norm_groups=32,
    )
    return _build(UNetConfig, defaults, overrides, "sd15")


def vae_tiny(**overrides: Any) -> AutoencoderKLConfig:
    """f4, ~1M params, for CPU runs on small images."""
    defaults = dict(block_channels=(32, 64, 64), num_res_blocks=1, latent_channels=4, norm_groups=8)
    return _build(AutoencoderKLConfig, defaults, overrides, "tiny")


def vae_small(**overrides: Any) -> AutoencoderKLConfig:
    """f4, ~5M params, for 28-64 px data on a GPU."""
    defaults = dict(block_channels=(64, 128, 128), num_res_blocks=2, latent_channels=4, norm_groups=32)
    return _build(AutoencoderKLConfig, defaults, overrides, "small")


def vae_sd(**overrides: Any) -> AutoencoderKLConfig:
    """Benchmark config C3: Stable Diffusion's KL-f8 autoencoder (83.65M params)."""
    defaults = dict(block_channels=(128, 256, 512, 512), num_res_blocks=2, latent_channels=4, norm_groups=32)
    return _build(AutoencoderKLConfig, defaults, overrides, "sd")


UNET_PRESETS: dict[str, Callable[..., UNetConfig]] = {
    "tiny": unet_tiny,
    "small": unet_small,
    "base": unet_base,
    "sd15": unet_sd15,
}

VAE_PRESETS: dict[str, Callable[..., AutoencoderKLConfig]] = {
    "tiny": vae_tiny,
    "small": vae_small,
    "sd": vae_sd,
}
