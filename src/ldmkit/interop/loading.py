"""Strict weight loading with errors that name the offending keys, and diffusers -> ldmkit builders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldmkit.interop.diffusers_config import (
    autoencoder_config_from_diffusers,
    autoencoder_latent_stats_from_diffusers,
    unet_config_from_diffusers,
)
from ldmkit.interop.diffusers_keys import autoencoder_state_dict_from_diffusers, unet_state_dict_from_diffusers
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.fitted import build_fitted, check_fit
from ldmkit.models.unet import UNet

def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "weights"
) -> None:
    """Load `state_dict` into `module`, raising `UserError` that names every missing key,
    unexpected key, shape mismatch and wrong kind of value (PyTorch's own error is a long
    traceback), or NaN / infinite weights (`models.fitted.check_fit`)."""
    check_fit(module.state_dict(), state_dict, source=source, target=type(module).__name__)
    module.load_state_dict(dict(state_dict), strict=True)


def unet_from_diffusers(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], class_name: str | None = None
) -> UNet:
    """An ldmkit `UNet` holding the weights of a diffusers `UNet2DModel` / `UNet2DConditionModel`."""
    unet_config = unet_config_from_diffusers(config, class_name)
    return build_fitted(lambda: UNet(unet_config), unet_state_dict_from_diffusers(state_dict),
                        source="diffusers UNet weights")


def autoencoder_from_diffusers(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> AutoencoderKL:
    """An ldmkit `AutoencoderKL` holding a diffusers `AutoencoderKL`'s weights and latent scaling."""
    vae_config = autoencoder_config_from_diffusers(config)
    shift, scale = autoencoder_latent_stats_from_diffusers(config)
    weights = autoencoder_state_dict_from_diffusers(state_dict, shift, scale)
    return build_fitted(lambda: AutoencoderKL(vae_config), weights, source="diffusers AutoencoderKL weights")
