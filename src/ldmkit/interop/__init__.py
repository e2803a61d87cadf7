"""Weights and configs to and from other projects (diffusers), and strict loading."""

from ldmkit.interop.diffusers_config import (
    autoencoder_config_from_diffusers,
    autoencoder_config_to_diffusers,
    autoencoder_latent_stats_from_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
)
from ldmkit.interop.diffusers_keys import (
    autoencoder_state_dict_from_diffusers,
    autoencoder_state_dict_to_diffusers,
    unet_state_dict_from_diffusers,
    unet_state_dict_to_diffusers,
)
from ldmkit.interop.loading import autoencoder_from_diffusers, load_state_dict_strict, unet_from_diffusers

__all__ = [
    "autoencoder_config_from_diffusers",
    "autoencoder_config_to_diffusers",
    "autoencoder_from_diffusers",
    "autoencoder_latent_stats_from_diffusers",
    "autoencoder_state_dict_from_diffusers",
    "autoencoder_state_dict_to_diffusers",
    "load_state_dict_strict",
    "unet_config_from_diffusers",
    "unet_config_to_diffusers",
    "unet_from_diffusers",
    "unet_state_dict_from_diffusers",
    "unet_state_dict_to_diffusers",
]
