"""The KL autoencoder of CompVis / Stability checkpoints (`ldm/modules/diffusionmodules/model.py`,
prefix `first_stage_model.`) in ldmkit's layout, both ways, and its config read off the weights.

    ldmkit                                   CompVis
    encoder.down_blocks.i.resnets.j          encoder.down.i.block.j
    encoder.down_blocks.i.downsample.conv    encoder.down.i.downsample.conv
    *.mid_block.resnet1 / attention / resnet2   *.mid.block_1 / attn_1 / block_2
    decoder.up_blocks.i (lowest resolution first)   decoder.up.(L-1-i) (CompVis indexes by resolution)
    resnet skip                              nin_shortcut
    attention to_q / to_k / to_v / to_out (linear)  q / k / v / proj_out (1x1 conv)

The latent normalisation buffers (`latent_shift`, `latent_scale`) have no CompVis weight: the
checkpoint's `scale_factor` (SD: 0.18215, often only in the YAML) sets them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ldmkit.errors import UserError
from ldmkit.interop.key_table import KeyTable
from ldmkit.models.autoencoder import LATENT_BUFFERS, AutoencoderKL, AutoencoderKLConfig

PREFIX = "first_stage_model."

_MID = {"resnet1": "block_1", "attention": "attn_1", "resnet2": "block_2"}
_ATTENTION = {"norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def _compvis_name(key: str, levels: int) -> str:
    key = re.sub(r"\.skip\.", ".nin_shortcut.", key)
    if m := re.match(r"(encoder|decoder)\.mid_block\.(\w+)\.(.*)", key):
        side, block, rest = m.groups()
        if block == "attention":
            head, _, tail = rest.partition(".")
            rest = f"{_ATTENTION[head]}.{tail}"
        return f"{side}.mid.{_MID[block]}.{rest}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(.*)", key):
        return f"encoder.down.{m.group(1)}.block.{m.group(2)}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(downsample\..*)", key):
        return f"encoder.down.{m.group(1)}.{m.group(2)}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.(upsample\..*)", key):
        return f"decoder.up.{levels - 1 - int(m.group(1))}.{m.group(2)}"
    return key  # conv_in, norm_out, conv_out, quant_conv, post_quant_conv: same names


def vae_key_table(config: AutoencoderKLConfig) -> KeyTable:
    """The ldmkit <-> CompVis key table of `AutoencoderKL(config)` (no prefix, no latent buffers)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(config).state_dict().items() if k not in LATENT_BUFFERS}
    table = KeyTable(shapes)
    levels = len(config.block_channels)
    for key in shapes:
        theirs = _compvis_name(key, levels)
        table.add(key, theirs)
        if re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", theirs):
            # CompVis attends with 1x1 convs: the same matrix with two trailing unit axes.
            table.set_transform(theirs, lambda w: w[:, :, None, None], lambda w: w[:, :, 0, 0])
    return table


def vae_state_dict_to_compvis(
    state_dict: Mapping[str, torch.Tensor], config: AutoencoderKLConfig
) -> dict[str, torch.Tensor]:
    """ldmkit `AutoencoderKL` weights -> CompVis `first_stage_model.*` weights (the latent
    normalisation is not a CompVis weight and is left out)."""
    weights = {k: v for k, v in state_dict.items() if k not in LATENT_BUFFERS}
    return {PREFIX + k: v for k, v in vae_key_table(config).to_theirs(weights, "autoencoder").items()}


def vae_state_dict_from_compvis(
    state_dict: Mapping[str, torch.Tensor], config: AutoencoderKLConfig, scaling_factor: float
) -> dict[str, torch.Tensor]:
    """CompVis autoencoder weights (with or without `first_stage_model.`) -> ldmkit weights,
    with latent_scale = `scaling_factor` and latent_shift = 0 (latents = raw * scaling_factor)."""
    bare = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state_dict.items()}
    out = vae_key_table(config).to_ours(bare, "CompVis autoencoder")
    out["latent_shift"] = torch.zeros(config.latent_channels)
    out["latent_scale"] = torch.full((config.latent_channels,), float(scaling_factor))
    return out


def vae_config_from_compvis(state_dict: Mapping[str, torch.Tensor], *, norm_groups: int = 32) -> AutoencoderKLConfig:
    """Read an `AutoencoderKLConfig` off CompVis autoencoder weights (keys without the prefix).

    GroupNorm's group count is not in the weights; CompVis always uses 32.
    """
    sd = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state_dict.items()}

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise UserError(f"CompVis autoencoder weights lack {key!r}: not a KL autoencoder?")
        return tuple(sd[key].shape)

    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    if not levels or not blocks:
        raise UserError("CompVis autoencoder weights have no encoder.down.N.block.M layers")
    latent = shape("post_quant_conv.weight")[0]
    moments = shape("quant_conv.weight")[0]
    if moments not in (latent, 2 * latent):
        raise UserError(f"CompVis autoencoder: quant_conv has {moments} channels for {latent} latent channels")
    return AutoencoderKLConfig(
        in_channels=shape("encoder.conv_in.weight")[1],
        out_channels=shape("decoder.conv_out.weight")[0],
        block_channels=tuple(shape(f"encoder.down.{i}.block.{blocks[-1]}.conv2.weight")[0] for i in levels),
        num_res_blocks=len(blocks),
        latent_channels=latent,
        double_z=moments == 2 * latent,
        norm_groups=norm_groups,
        mid_attention="encoder.mid.attn_1.q.weight" in sd,
    )
