"""Networks: the denoising UNet, the KL autoencoder, the seed-compatible wrapper, presets."""

from ldmkit.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ldmkit.models.distributions import DiagonalGaussian
from ldmkit.models.presets import UNET_PRESETS, VAE_PRESETS
from ldmkit.models.seed import LatentDiffusionModel
from ldmkit.models.unet import UNet
from ldmkit.models.unet_config import UNetConfig

__all__ = [
    "UNET_PRESETS",
    "VAE_PRESETS",
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "DiagonalGaussian",
    "LatentDiffusionModel",
    "UNet",
    "UNetConfig",
]
