"""State-dict key mapping between diffusers and ldmkit (weights are shared as they are: the
module layouts are the same, only names differ).

Covers `UNet2DModel`, `UNet2DConditionModel` and `AutoencoderKL`. No diffusers import: this is
string work on dicts. Configs are mapped in `ldmkit.interop.diffusers_config`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ldmkit.errors import UserError
from ldmkit.interop.key_table import rename
from ldmkit.models.autoencoder import LATENT_BUFFERS

# (diffusers pattern, ldmkit replacement), applied in order to each key. Segments are matched
# with their dots so that e.g. "norm" never matches inside "norm1".
_RENAMES: list[tuple[str, str]] = [
    # The attention names of diffusers before 0.14, still on the hub (stabilityai/sd-vae-ft-mse,
    # google/ddpm-*), which diffusers renames on load (_convert_deprecated_attention_blocks).
    (r"(\.attentions\.\d+)\.query\.", r"\1.to_q."),
    (r"(\.attentions\.\d+)\.key\.", r"\1.to_k."),
    (r"(\.attentions\.\d+)\.value\.", r"\1.to_v."),
    (r"(\.attentions\.\d+)\.proj_attn\.", r"\1.to_out.0."),
    (r"^time_embedding\.linear_1\.", "time_embed.linear_in."),
    (r"^time_embedding\.linear_2\.", "time_embed.linear_out."),
    (r"^class_embedding\.weight$", "class_embed.weight"),
    # UNet2DConditionModel(class_embed_type="projection"): an MLP on a free vector.
    (r"^class_embedding\.linear_1\.", "cond_embed.linear_in."),
    (r"^class_embedding\.linear_2\.", "cond_embed.linear_out."),
    (r"\.time_emb_proj\.", ".emb_proj."),
    (r"\.conv_shortcut\.", ".skip."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.downsamplers\.0\.", ".downsample."),
    (r"\.upsamplers\.0\.", ".upsample."),
    (r"(^|\.)mid_block\.resnets\.0\.", r"\1mid_block.resnet1."),
    (r"(^|\.)mid_block\.resnets\.1\.", r"\1mid_block.resnet2."),
    (r"(^|\.)mid_block\.attentions\.0\.", r"\1mid_block.attention."),
    (r"\.transformer_blocks\.", ".blocks."),
    (r"\.ff\.net\.0\.proj\.", ".ff.proj_in."),
    (r"\.ff\.net\.2\.", ".ff.proj_out."),
    (r"(^|\.)conv_norm_out\.", r"\1norm_out."),
]

# ldmkit -> diffusers. The self-attention GroupNorm is "norm" in ldmkit but "group_norm" in
# diffusers, while the spatial transformer's GroupNorm is "norm" on both sides: that rule
# applies only to models whose attention layers are self-attention blocks.
_REVERSE: list[tuple[str, str]] = [
    (r"^time_embed\.linear_in\.", "time_embedding.linear_1."),
    (r"^time_embed\.linear_out\.", "time_embedding.linear_2."),
    (r"^class_embed\.weight$", "class_embedding.weight"),
    (r"^cond_embed\.linear_in\.", "class_embedding.linear_1."),
    (r"^cond_embed\.linear_out\.", "class_embedding.linear_2."),
    (r"\.emb_proj\.", ".time_emb_proj."),
    (r"\.skip\.", ".conv_shortcut."),
    (r"\.to_out\.", ".to_out.0."),
    (r"\.downsample\.", ".downsamplers.0."),
    (r"\.upsample\.", ".upsamplers.0."),
    (r"(^|\.)mid_block\.resnet1\.", r"\1mid_block.resnets.0."),
    (r"(^|\.)mid_block\.resnet2\.", r"\1mid_block.resnets.1."),
    (r"(^|\.)mid_block\.attention\.", r"\1mid_block.attentions.0."),
    (r"\.blocks\.", ".transformer_blocks."),
    (r"\.ff\.proj_in\.", ".ff.net.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.net.2."),
    (r"(^|\.)norm_out\.", r"\1conv_norm_out."),
]
_SELF_ATTENTION_NORM = (r"(\.attentions\.\d+)\.norm\.", r"\1.group_norm.")



def _rename_all(state_dict: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = rename(key, rules)
        if new in out:
            raise UserError(f"two weights map to the same name {new!r}; is this a state dict of the right model?")
        out[new] = value
    return out


def unet_state_dict_from_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `UNet2DModel` / `UNet2DConditionModel` weights -> `ldmkit.models.UNet` weights."""
    return _rename_all(state_dict, _RENAMES)


def unet_state_dict_to_diffusers(
    state_dict: Mapping[str, torch.Tensor], *, cross_attention: bool
) -> dict[str, torch.Tensor]:
    """`UNet` weights -> diffusers weights: `UNet2DConditionModel` layout when `cross_attention`
    (the config has `context_dim`), else `UNet2DModel` layout."""
    rules = _REVERSE if cross_attention else [*_REVERSE, _SELF_ATTENTION_NORM]
    return _rename_all(state_dict, rules)


def autoencoder_state_dict_from_diffusers(
    state_dict: Mapping[str, torch.Tensor],
    latent_shift: torch.Tensor | None = None,
    latent_scale: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderKL` weights -> `ldmkit.models.AutoencoderKL` weights.

    diffusers keeps the latent normalisation in its config, ldmkit in two buffers; pass them
    (see `diffusers_config.autoencoder_latent_stats_from_diffusers`) or leave the identity.
    """
    out = _rename_all(state_dict, _RENAMES)
    if "post_quant_conv.weight" not in out:
        raise UserError("not an AutoencoderKL state dict: post_quant_conv.weight is missing")
    channels = out["post_quant_conv.weight"].shape[0]
    shift = torch.zeros(channels) if latent_shift is None else torch.as_tensor(latent_shift, dtype=torch.float32)
    scale = torch.ones(channels) if latent_scale is None else torch.as_tensor(latent_scale, dtype=torch.float32)
    out["latent_shift"] = shift.expand(channels).clone()
    out["latent_scale"] = scale.expand(channels).clone()
    return out


def autoencoder_state_dict_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`AutoencoderKL` weights -> diffusers weights (the latent buffers go to the config instead:
    see `diffusers_config.autoencoder_config_to_diffusers`)."""
    weights = {k: v for k, v in state_dict.items() if k not in LATENT_BUFFERS}
    return _rename_all(weights, [*_REVERSE, _SELF_ATTENTION_NORM])
