"""Weights and configs to and from other projects (diffusers folders, CompVis / Stable Diffusion
checkpoints), strict loading, and conversion to ldmkit inference files."""

from ldmkit.interop.bundle import ModelBundle, load_bundle, load_model
from ldmkit.interop.compvis_unet import (
    unet_config_from_compvis,
    unet_state_dict_from_compvis,
    unet_state_dict_to_compvis,
)
from ldmkit.interop.compvis_vae import vae_config_from_compvis, vae_state_dict_from_compvis, vae_state_dict_to_compvis
from ldmkit.interop.convert import convert
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
from ldmkit.interop.diffusers_scheduler import schedule_from_diffusers, schedule_to_diffusers
from ldmkit.interop.loading import autoencoder_from_diffusers, load_state_dict_strict, unet_from_diffusers

__all__ = [
    "ModelBundle",
    "autoencoder_config_from_diffusers",
    "autoencoder_config_to_diffusers",
    "autoencoder_from_diffusers",
    "autoencoder_latent_stats_from_diffusers",
    "autoencoder_state_dict_from_diffusers",
    "autoencoder_state_dict_to_diffusers",
    "convert",
    "load_bundle",
    "load_model",
    "load_state_dict_strict",
    "schedule_from_diffusers",
    "schedule_to_diffusers",
    "unet_config_from_compvis",
    "unet_config_from_diffusers",
    "unet_config_to_diffusers",
    "unet_from_diffusers",
    "unet_state_dict_from_compvis",
    "unet_state_dict_from_diffusers",
    "unet_state_dict_to_compvis",
    "unet_state_dict_to_diffusers",
    "vae_config_from_compvis",
    "vae_state_dict_from_compvis",
    "vae_state_dict_to_compvis",
]
