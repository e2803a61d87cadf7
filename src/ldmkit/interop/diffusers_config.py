"""Config mapping between diffusers (`UNet2DModel`, `UNet2DConditionModel`, `AutoencoderKL`
config dicts) and ldmkit's config dataclasses.

Only architectures both sides express are converted; any diffusers option that would change the
computation and has no ldmkit equivalent raises `UserError` naming it (options that only affect
speed or precision, like `upcast_attention` or `sample_size`, are ignored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ldmkit.errors import UserError
from ldmkit.models.autoencoder import AutoencoderKLConfig
from ldmkit.models.unet_config import UNetConfig

_UNET2D = "UNet2DModel"
_UNET2D_COND = "UNet2DConditionModel"


def _require(cfg: Mapping[str, Any], cls: str, key: str, allowed: Sequence[Any], default: Any) -> Any:
    value = cfg.get(key, default)
    if value not in allowed:
        raise UserError(f"diffusers {cls} with {key}={value!r} has no ldmkit equivalent (supported: {list(allowed)})")
    return value


def _uniform(value: Any, cls: str, key: str) -> Any:
    """A per-level list whose entries all agree -> that entry (scalars pass through)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UserError(f"diffusers {cls} with per-level {key}={list(value)} has no ldmkit equivalent")
        return value[0]
    return value


def _base_and_mult(channels: Sequence[int], cls: str) -> tuple[int, tuple[int, ...]]:
    base = int(channels[0])
    if any(int(c) % base for c in channels):
        raise UserError(f"diffusers {cls} block_out_channels={list(channels)}: each must be a multiple of the first")
    return base, tuple(int(c) // base for c in channels)


def _attention_levels(
    cfg: Mapping[str, Any], cls: str, plain: tuple[str, str], attn: tuple[str, str]
) -> tuple[int, ...]:
    """Levels with attention, checked to be the same on the down and the (reversed) up path."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    n = len(cfg["block_out_channels"])
    if len(down) != n or len(up) != n:
        raise UserError(f"diffusers {cls}: need one down and one up block type per entry of block_out_channels")
    for kind in down:
        if kind not in (plain[0], attn[0]):
            raise UserError(f"diffusers {cls} down block {kind!r} has no ldmkit equivalent ({plain[0]}, {attn[0]})")
    for kind in up:
        if kind not in (plain[1], attn[1]):
            raise UserError(f"diffusers {cls} up block {kind!r} has no ldmkit equivalent ({plain[1]}, {attn[1]})")
    levels = tuple(i for i, kind in enumerate(down) if kind == attn[0])
    if levels != tuple(i for i, kind in enumerate(reversed(up)) if kind == attn[1]):
        raise UserError(f"diffusers {cls}: ldmkit needs attention on the same levels of the down and up paths")
    return levels


def _common_unet_fields(cfg: Mapping[str, Any], cls: str) -> dict[str, Any]:
    for key, allowed, default in [
        ("act_fn", ["silu"], "silu"),
        ("center_input_sample", [False], False),
        ("time_embedding_type", ["positional"], "positional"),
        ("downsample_padding", [1], 1),
        ("mid_block_scale_factor", [1, 1.0], 1),
        ("resnet_time_scale_shift", ["default", "scale_shift"], "default"),
    ]:
        _require(cfg, cls, key, allowed, default)
    base, mult = _base_and_mult(cfg["block_out_channels"], cls)
    channels = 3 if cls == _UNET2D else 4  # what each class's __init__ fills in for a missing key
    return dict(
        in_channels=int(cfg.get("in_channels", channels)),
        out_channels=int(cfg.get("out_channels", channels)),
        base_channels=base,
        channel_mult=mult,
        num_res_blocks=int(cfg.get("layers_per_block", 2)),
        dropout=float(cfg.get("dropout", 0.0)),
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        norm_eps=float(cfg.get("norm_eps", 1e-5)),
        resnet_scale_shift=cfg.get("resnet_time_scale_shift", "default") == "scale_shift",
        time_embed_dim=cfg.get("time_embedding_dim"),
        flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
        freq_shift=float(cfg.get("freq_shift", 0)),
        zero_init_output=False,  # diffusers does not zero its output conv
    )


def _unet2d_from_diffusers(cfg: Mapping[str, Any]) -> UNetConfig:
    cls = _UNET2D
    fields = _common_unet_fields(cfg, cls)
    _require(cfg, cls, "mid_block_type", ["UNetMidBlock2D"], "UNetMidBlock2D")
    _require(cfg, cls, "downsample_type", ["conv"], "conv")
    _require(cfg, cls, "upsample_type", ["conv"], "conv")
    _require(cfg, cls, "class_embed_type", [None], None)
    mid_attention = bool(cfg.get("add_attention", True))
    attn_groups = cfg.get("attn_norm_num_groups")
    if attn_groups is not None and attn_groups != fields["norm_groups"]:
        raise UserError(f"diffusers {cls}: attn_norm_num_groups={attn_groups} differing from norm_num_groups")
    if fields["resnet_scale_shift"] and mid_attention and attn_groups is None:
        # diffusers then builds its middle attention without a GroupNorm.
        raise UserError(f"diffusers {cls} with scale_shift and attn_norm_num_groups=None has no ldmkit equivalent")
    # A missing key is UNet2DModel.__init__'s default (8-channel heads); an explicit null, one head per layer.
    head_dim = cfg.get("attention_head_dim", 8)
    n_class = cfg.get("num_class_embeds")
    if n_class is not None and n_class < 2:
        raise UserError(f"diffusers {cls}: num_class_embeds={n_class}: ldmkit needs at least one class plus the null")
    return UNetConfig(
        **fields,
        attention_levels=_attention_levels(
            cfg, cls, ("DownBlock2D", "UpBlock2D"), ("AttnDownBlock2D", "AttnUpBlock2D")
        ),
        mid_attention=mid_attention,
        num_heads=1 if head_dim is None else None,
        head_dim=None if head_dim is None else int(head_dim),
        num_classes=None if n_class is None else int(n_class) - 1,
    )


def _unet2d_condition_from_diffusers(cfg: Mapping[str, Any]) -> UNetConfig:
    cls = _UNET2D_COND
    fields = _common_unet_fields(cfg, cls)
    for key, allowed, default in [
        ("only_cross_attention", [False, None], False),
        ("dual_cross_attention", [False], False),
        ("class_embed_type", [None, "projection"], None),
        ("addition_embed_type", [None], None),
        ("time_cond_proj_dim", [None], None),
        ("conv_in_kernel", [3], 3),
        ("conv_out_kernel", [3], 3),
        ("encoder_hid_dim", [None], None),
        ("attention_type", ["default"], "default"),
        ("resnet_skip_time_act", [False], False),
        ("resnet_out_scale_factor", [1, 1.0], 1.0),
        ("time_embedding_act_fn", [None], None),
        ("timestep_post_act", [None], None),
        ("class_embeddings_concat", [False], False),
        ("mid_block_only_cross_attention", [None, False], None),
        ("cross_attention_norm", [None], None),
        ("reverse_transformer_layers_per_block", [None], None),
        ("mid_block_type", ["UNetMidBlock2DCrossAttn", "UNetMidBlock2D"], "UNetMidBlock2DCrossAttn"),
    ]:
        _require(cfg, cls, key, allowed, default)
    levels = _attention_levels(
        cfg, cls, ("DownBlock2D", "UpBlock2D"), ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")
    )
    mid_attention = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn"
    # diffusers' historical naming: attention_head_dim holds the number of heads for this class.
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    widths = [fields["base_channels"] * m for m in fields["channel_mult"]]
    heads_per_level = [int(h) for h in heads] if isinstance(heads, (list, tuple)) else [int(heads)] * len(widths)
    attended = list(levels) + ([len(widths) - 1] if mid_attention else [])
    counts = {heads_per_level[i] for i in attended}
    if len(counts) <= 1:  # one head count everywhere (SD 1.x)
        num_heads, head_dim = (counts.pop() if counts else heads_per_level[0]), None
    else:  # counts differ: ldmkit can still express it if the head size is fixed
        sizes = {widths[i] // heads_per_level[i] for i in attended}
        if len(sizes) != 1 or any(widths[i] % heads_per_level[i] for i in attended):
            raise UserError(f"diffusers {cls}: heads {heads_per_level} give neither a fixed count nor a fixed size")
        num_heads, head_dim = None, sizes.pop()
    cond_dim = None
    if cfg.get("class_embed_type") == "projection":
        cond_dim = int(cfg["projection_class_embeddings_input_dim"])
    n_class = cfg.get("num_class_embeds")
    return UNetConfig(
        **fields,
        attention_levels=levels,
        mid_attention=mid_attention,
        num_heads=num_heads,
        head_dim=head_dim,
        num_classes=None if n_class is None or cond_dim is not None else int(n_class) - 1,
        cond_dim=cond_dim,
        context_dim=int(_uniform(cfg.get("cross_attention_dim", 1280), cls, "cross_attention_dim")),
        transformer_depth=int(
            _uniform(cfg.get("transformer_layers_per_block", 1), cls, "transformer_layers_per_block")
        ),
        linear_projection=bool(cfg.get("use_linear_projection", False)),
    )


def unet_config_from_diffusers(config: Mapping[str, Any], class_name: str | None = None) -> UNetConfig:
    """The `UNetConfig` computing the same function as a diffusers UNet with this config.

    `class_name` ("UNet2DModel" or "UNet2DConditionModel") defaults to the config's
    `_class_name`, else is guessed from the presence of `cross_attention_dim`.
    """
    cfg = dict(config)
    name = class_name or cfg.get("_class_name") or (_UNET2D_COND if "cross_attention_dim" in cfg else _UNET2D)
    if name == _UNET2D:
        return _unet2d_from_diffusers(cfg)
    if name == _UNET2D_COND:
        return _unet2d_condition_from_diffusers(cfg)
    raise UserError(f"cannot convert a diffusers {name}: only {_UNET2D} and {_UNET2D_COND} are supported")


def unet_config_to_diffusers(config: UNetConfig) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config kwargs) computing the same function as `UNet(config)`."""
    c = config
    widths = list(c.block_channels)
    if not c.conv_resample:
        raise UserError("a UNet with conv_resample=False (average-pool downsampling) has no diffusers equivalent")
    common: dict[str, Any] = dict(
        in_channels=c.in_channels, out_channels=c.out_channels, block_out_channels=widths,
        layers_per_block=c.num_res_blocks, dropout=c.dropout, norm_num_groups=c.norm_groups,
        norm_eps=c.norm_eps, resnet_time_scale_shift="scale_shift" if c.resnet_scale_shift else "default",
        # None = diffusers' default, 4 x the first width, as ldmkit's (so the config round-trips).
        time_embedding_dim=c.time_embed_dim, flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift,
        num_class_embeds=None if c.num_classes is None else c.num_classes + 1,
    )
    levels = range(len(widths))
    if c.context_dim is None:
        if c.cond_dim is not None:
            raise UserError("a UNet with cond_dim but no context_dim has no diffusers equivalent")
        if c.num_heads is not None:
            attended = [widths[i] for i in c.attention_levels] + ([widths[-1]] if c.mid_attention else [])
            sizes = {w // c.num_heads for w in attended}
            if c.num_heads != 1 and len(sizes) > 1:
                raise UserError("UNet2DModel needs one head size for all levels; this config fixes the head count")
            head_dim = None if c.num_heads == 1 else (sizes.pop() if sizes else 64)
        else:
            head_dim = c.head_dim
        return _UNET2D, dict(
            common,
            down_block_types=["AttnDownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in levels],
            up_block_types=["AttnUpBlock2D" if i in c.attention_levels else "UpBlock2D" for i in reversed(levels)],
            mid_block_type="UNetMidBlock2D",
            add_attention=c.mid_attention,
            attention_head_dim=head_dim,
            attn_norm_num_groups=c.norm_groups if c.resnet_scale_shift else None,
        )
    if c.cond_dim is not None and c.num_classes is not None:
        raise UserError("UNet2DConditionModel cannot hold both a class table and a cond-vector MLP")
    heads = c.num_heads if c.num_heads is not None else [max(w // c.head_dim, 1) for w in widths]
    extra: dict[str, Any] = {}
    if c.cond_dim is not None:
        extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=c.cond_dim)
    return _UNET2D_COND, dict(
        common,
        **extra,
        down_block_types=["CrossAttnDownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in levels],
        up_block_types=["CrossAttnUpBlock2D" if i in c.attention_levels else "UpBlock2D" for i in reversed(levels)],
        mid_block_type="UNetMidBlock2DCrossAttn" if c.mid_attention else "UNetMidBlock2D",
        attention_head_dim=heads,  # diffusers reads this as the head count for this class
        cross_attention_dim=c.context_dim,
        transformer_layers_per_block=c.transformer_depth,
        use_linear_projection=c.linear_projection,
    )


def autoencoder_config_from_diffusers(config: Mapping[str, Any]) -> AutoencoderKLConfig:
    """The `AutoencoderKLConfig` of a diffusers `AutoencoderKL` config (SD's KL autoencoders)."""
    cfg, cls = dict(config), "AutoencoderKL"
    channels = tuple(int(c) for c in cfg.get("block_out_channels", (64,)))
    n = len(channels)
    if list(cfg.get("down_block_types", ["DownEncoderBlock2D"])) != ["DownEncoderBlock2D"] * n:
        raise UserError(f"diffusers {cls}: only DownEncoderBlock2D blocks, one per block_out_channels entry")
    if list(cfg.get("up_block_types", ["UpDecoderBlock2D"])) != ["UpDecoderBlock2D"] * n:
        raise UserError(f"diffusers {cls}: only UpDecoderBlock2D blocks, one per block_out_channels entry")
    _require(cfg, cls, "act_fn", ["silu"], "silu")
    _require(cfg, cls, "use_quant_conv", [True], True)
    _require(cfg, cls, "use_post_quant_conv", [True], True)
    return AutoencoderKLConfig(
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)),
        block_channels=channels,
        num_res_blocks=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg.get("latent_channels", 4)),
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        mid_attention=bool(cfg.get("mid_block_add_attention", True)),
    )


def autoencoder_latent_stats_from_diffusers(config: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent_shift, latent_scale) with diffusers' normalisation: latents = (raw - shift) * scale,
    from `shift_factor` / `scaling_factor`, or per channel from `latents_mean` / `latents_std`."""
    n = int(config.get("latent_channels", 4))
    factor = float(config.get("scaling_factor", 0.18215))
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        shift = torch.tensor(config["latents_mean"], dtype=torch.float32)
        # float64, then rounded once: 1 / (1 / scale) gives back ldmkit's float32 scale exactly.
        scale = (factor / torch.tensor(config["latents_std"], dtype=torch.float64)).float()
    else:
        shift = torch.full((n,), float(config.get("shift_factor") or 0.0))
        scale = torch.full((n,), factor)
    return shift, scale


def autoencoder_config_to_diffusers(
    config: AutoencoderKLConfig,
    latent_shift: torch.Tensor | None = None,
    latent_scale: torch.Tensor | None = None,
) -> dict[str, Any]:
    """diffusers `AutoencoderKL` kwargs for `config`, with the latent normalisation if given."""
    c = config
    default = AutoencoderKLConfig()
    clamp, default_clamp = (c.logvar_min, c.logvar_max), (default.logvar_min, default.logvar_max)
    if not c.double_z or c.norm_eps != 1e-6 or clamp != default_clamp:
        raise UserError("diffusers AutoencoderKL fixes double_z=True, norm_eps=1e-6 and the logvar clamp (-30, 20)")
    n = len(c.block_channels)
    out: dict[str, Any] = dict(
        in_channels=c.in_channels, out_channels=c.out_channels, block_out_channels=list(c.block_channels),
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        layers_per_block=c.num_res_blocks, latent_channels=c.latent_channels, norm_num_groups=c.norm_groups,
        mid_block_add_attention=c.mid_attention,
    )
    if latent_shift is not None and latent_scale is not None:
        shift, scale = torch.as_tensor(latent_shift).float(), torch.as_tensor(latent_scale).float()
        if bool((shift == shift[0]).all()) and bool((scale == scale[0]).all()):
            out.update(scaling_factor=float(scale[0]), shift_factor=float(shift[0]) or None)
        else:
            out.update(scaling_factor=1.0, latents_mean=shift.tolist(), latents_std=(1.0 / scale.double()).tolist())
    return out
