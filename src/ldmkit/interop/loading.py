"""Strict weight loading with errors that name the offending keys, and diffusers -> ldmkit builders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldmkit.errors import UserError
from ldmkit.interop.diffusers_config import (
    autoencoder_config_from_diffusers,
    autoencoder_latent_stats_from_diffusers,
    unet_config_from_diffusers,
)
from ldmkit.interop.diffusers_keys import autoencoder_state_dict_from_diffusers, unet_state_dict_from_diffusers
from ldmkit.models.autoencoder import AutoencoderKL
from ldmkit.models.unet import UNet

_SHOWN = 8  # names listed per kind of problem before "... and N more"


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "weights"
) -> None:
    """Load `state_dict` into `module`, raising `UserError` that names every missing key,
    unexpected key and shape mismatch (PyTorch's own error is a long traceback)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (given vs model): {_names(mismatched)}")
    if problems:
        raise UserError(f"{source} do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)


def unet_from_diffusers(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], class_name: str | None = None
) -> UNet:
    """An ldmkit `UNet` holding the weights of a diffusers `UNet2DModel` / `UNet2DConditionModel`."""
    model = UNet(unet_config_from_diffusers(config, class_name))
    load_state_dict_strict(model, unet_state_dict_from_diffusers(state_dict), source="diffusers UNet weights")
    return model


def autoencoder_from_diffusers(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> AutoencoderKL:
    """An ldmkit `AutoencoderKL` holding a diffusers `AutoencoderKL`'s weights and latent scaling."""
    model = AutoencoderKL(autoencoder_config_from_diffusers(config))
    shift, scale = autoencoder_latent_stats_from_diffusers(config)
    weights = autoencoder_state_dict_from_diffusers(state_dict, shift, scale)
    load_state_dict_strict(model, weights, source="diffusers AutoencoderKL weights")
    return model
