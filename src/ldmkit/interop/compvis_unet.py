"""The UNet of CompVis / Stability checkpoints (`ldm/modules/diffusionmodules/openaimodel.py`)
in ldmkit's layout, both ways, and its config read back from the weights.

CompVis numbers its blocks flat: `input_blocks.N.M` (N counts every ResNet and downsampler,
M is the layer within the block: 0 ResNet, 1 attention), `middle_block.{0,1,2}`,
`output_blocks.N.M` (ResNet, attention, upsampler). ldmkit nests them by level. The key table is
built from an ldmkit `UNetConfig` (the module list of `UNet(config)` on the meta device), so
both directions use the same table and a key that is not in it is an error, never skipped.

Layer names inside the blocks:

    ResNet          norm1 conv1 emb_proj norm2 conv2 skip      (ldmkit)
                    in_layers.0 in_layers.2 emb_layers.1 out_layers.0 out_layers.3 skip_connection
    Transformer     blocks.N / ff.proj_in / ff.proj_out / attn*.to_out
                    transformer_blocks.N / ff.net.0.proj / ff.net.2 / attn*.to_out.0
    AttentionBlock  norm, to_q + to_k + to_v (linear), to_out
                    norm, qkv (conv1d, "legacy" head-interleaved order), proj_out (conv1d)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ldmkit.errors import UserError
from ldmkit.interop.key_table import KeyTable, Merge, Split, rename
from ldmkit.models.unet import UNet
from ldmkit.models.unet_config import UNetConfig

PREFIX = "model.diffusion_model."

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "skip": "skip_connection"}
_ATTENTION = {"norm": "norm", "to_q": "qkv", "to_k": "qkv", "to_v": "qkv", "to_out": "proj_out"}
_TRANSFORMER = [(r"^blocks\.", "transformer_blocks."), (r"\.ff\.proj_in\.", ".ff.net.0.proj."),
                (r"\.ff\.proj_out\.", ".ff.net.2."), (r"\.to_out\.", ".to_out.0.")]
_RESAMPLE = {"downsample": "op", "upsample": "conv"}
_TOP = {"conv_in.": "input_blocks.0.0.", "time_embed.linear_in.": "time_embed.0.",
        "time_embed.linear_out.": "time_embed.2.", "class_embed.": "label_emb.",
        "cond_embed.linear_in.": "label_emb.0.0.", "cond_embed.linear_out.": "label_emb.0.2.",
        "norm_out.": "out.0.", "conv_out.": "out.2."}


def _block_prefixes(config: UNetConfig) -> dict[str, str]:
    """ldmkit module prefix -> CompVis module prefix, for every ResNet, attention and resampler."""
    out: dict[str, str] = {}
    levels = len(config.channel_mult)
    n = 1  # input_blocks.0 is conv_in
    for level in range(levels):
        for j in range(config.num_res_blocks):
            out[f"down_blocks.{level}.resnets.{j}."] = f"input_blocks.{n}.0."
            if level in config.attention_levels:
                out[f"down_blocks.{level}.attentions.{j}."] = f"input_blocks.{n}.1."
            n += 1
        if level != levels - 1:
            out[f"down_blocks.{level}.downsample."] = f"input_blocks.{n}.0."
            n += 1
    mid = ["resnet1", "attention", "resnet2"] if config.mid_attention else ["resnet1", "resnet2"]
    for i, name in enumerate(mid):
        out[f"mid_block.{name}."] = f"middle_block.{i}."
    n = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(config.num_res_blocks + 1):
            out[f"up_blocks.{up}.resnets.{j}."] = f"output_blocks.{n}.0."
            m = 1
            if level in config.attention_levels:
                out[f"up_blocks.{up}.attentions.{j}."] = f"output_blocks.{n}.1."
                m = 2
            if j == config.num_res_blocks and level != 0:
                out[f"up_blocks.{up}.upsample."] = f"output_blocks.{n}.{m}."
            n += 1
    return out


def _compvis_name(key: str, blocks: Mapping[str, str], cross_attention: bool) -> str:
    """The CompVis name of one ldmkit UNet key (the self-attention q/k/v all name `qkv`)."""
    for ours, theirs in _TOP.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    module = max((p for p in blocks if key.startswith(p)), key=len, default=None)
    if module is None:
        raise UserError(f"UNet weight {key!r} has no CompVis name")
    rest, target = key[len(module):], blocks[module]
    head, _, tail = rest.partition(".")
    if ".resnet" in module:
        return f"{target}{_RESNET[head]}.{tail}"
    if module.endswith("sample."):  # ldmkit's resampler wraps its conv: downsample.conv.weight
        return f"{target}{_RESAMPLE[module.split('.')[-2]]}.{tail}"
    if cross_attention:  # SpatialTransformer
        return target + rename(rest, _TRANSFORMER)
    # Legacy AttentionBlock: to_q / to_k / to_v are the thirds of one qkv conv.
    return f"{target}{_ATTENTION[head]}.{tail}"


def unet_key_table(config: UNetConfig) -> KeyTable:
    """The ldmkit <-> CompVis key table of `UNet(config)` (without the `model.diffusion_model.`
    prefix); self-attention blocks carry the qkv merge/split as a transform."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}
    blocks = _block_prefixes(config)
    cross = config.context_dim is not None
    table = KeyTable(shapes)
    for key in shapes:
        table.add(key, _compvis_name(key, blocks, cross))
    if not cross:
        for ours, theirs in list(table.grouped()):
            if len(ours) == 3:  # to_q, to_k, to_v -> qkv, in that order (the module's own order)
                assert [k.split(".")[-2] for k in ours] == ["to_q", "to_k", "to_v"], ours
                heads, _ = config.heads_at(shapes[ours[0]][0])
                table.set_transform(theirs, *_qkv_transform(heads))
            elif theirs.endswith("proj_out.weight"):
                table.set_transform(theirs, lambda w: w[:, :, None], lambda w: w[:, :, 0])
    return table


def _qkv_transform(heads: int) -> tuple[Merge, Split]:
    """(merge, split) between three [C, C] (or [C]) tensors and CompVis' legacy qkv conv1d, whose
    output rows are grouped per head as [q_h; k_h; v_h] (openaimodel.QKVAttentionLegacy)."""

    def merge(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        c = q.shape[0]
        stacked = torch.stack([t.reshape(heads, c // heads, *t.shape[1:]) for t in (q, k, v)], dim=1)
        merged = stacked.reshape(3 * c, *q.shape[1:])  # [heads, 3, ch, ...] -> [3C, ...]
        return merged[:, :, None] if merged.ndim == 2 else merged  # weights gain the conv1d axis

    def split(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = qkv[:, :, 0] if qkv.ndim == 3 else qkv
        c = w.shape[0] // 3
        grouped = w.reshape(heads, 3, c // heads, *w.shape[1:])
        return tuple(grouped[:, i].reshape(c, *w.shape[1:]) for i in range(3))  # type: ignore[return-value]

    return merge, split


def unet_state_dict_to_compvis(
    state_dict: Mapping[str, torch.Tensor], config: UNetConfig
) -> dict[str, torch.Tensor]:
    """ldmkit `UNet` weights -> CompVis `model.diffusion_model.*` weights."""
    return {PREFIX + k: v for k, v in unet_key_table(config).to_theirs(state_dict, "UNet").items()}


def unet_state_dict_from_compvis(
    state_dict: Mapping[str, torch.Tensor], config: UNetConfig
) -> dict[str, torch.Tensor]:
    """CompVis UNet weights (with or without the `model.diffusion_model.` prefix) -> ldmkit names.

    Every key must be in the table and every table entry present: otherwise `UserError` naming them.
    """
    bare = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state_dict.items()}
    return unet_key_table(config).to_ours(bare, "CompVis UNet")


# --------------------------------------------------------------------- config from weights
def _indices(keys: list[str], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def unet_config_from_compvis(
    state_dict: Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    head_dim: int | None = None,
    norm_groups: int = 32,
) -> UNetConfig:
    """Read a `UNetConfig` off CompVis UNet weights (keys without `model.diffusion_model.`).

    Everything but the head split is in the shapes. Heads default to Stable Diffusion's: 8 heads
    with a 768-wide context (SD 1.x), 64-channel heads with a 1024-wide one (SD 2.x); any other
    model needs `num_heads` or `head_dim` (its YAML's `num_heads` / `num_head_channels`).
    """
    sd = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state_dict.items()}
    keys = list(sd)

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise UserError(f"CompVis UNet weights lack {key!r}: not an openaimodel UNet?")
        return tuple(sd[key].shape)

    base, in_channels = shape("input_blocks.0.0.weight")[:2]
    widths: list[list[int]] = [[]]
    attention: list[bool] = []
    for n in _indices(keys, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{n}.0.op.weight" in sd:
            widths.append([])
        else:
            widths[-1].append(shape(f"input_blocks.{n}.0.in_layers.2.weight")[0])
            attention.append(any(k.startswith(f"input_blocks.{n}.1.") for k in keys))
    counts = {len(w) for w in widths}
    if len(counts) != 1 or 0 in counts:
        per_level = [len(w) for w in widths]
        raise UserError(f"CompVis UNet with {per_level} ResNets per level: ldmkit needs one number for all levels")
    num_res = counts.pop()
    level_width = [w[-1] for w in widths]
    if any(w % base for w in level_width):
        raise UserError(f"CompVis UNet level widths {level_width} are not multiples of {base}")
    levels = tuple(i for i in range(len(widths)) if any(attention[i * num_res:(i + 1) * num_res]))
    transformer_keys = [k for k in keys if ".transformer_blocks." in k]
    context_dim = None
    depth = 1
    linear = False
    if transformer_keys:
        context_dim = shape(next(k for k in transformer_keys if k.endswith("attn2.to_k.weight")))[1]
        first = transformer_keys[0].split(".transformer_blocks.")[0]
        depth = len(_indices(keys, re.escape(first) + r"\.transformer_blocks\.(\d+)\."))
        linear = len(shape(first + ".proj_in.weight")) == 2
    mid_attention = any(k.startswith("middle_block.2.") for k in keys)  # three middle blocks: ResNet, attention, ResNet
    if num_heads is None and head_dim is None:
        if not levels and not mid_attention:
            num_heads = 1  # no attention layer: the split changes nothing
        elif context_dim == 768:
            num_heads = 8
        elif context_dim == 1024:
            head_dim = 64
        else:
            which = ("this UNet has no cross-attention to take SD's from" if context_dim is None
                     else f"a context of {context_dim} is neither SD 1.x's nor 2.x's")
            raise UserError(f"the number of attention heads is not stored in CompVis weights, and {which}: "
                            "convert it once with `ldm convert SRC "
                            "OUT.safetensors --num-heads N` or `--head-dim N` (the model YAML's num_heads / "
                            "num_head_channels; num_heads= / head_dim= in Python)")
    emb_dim, _ = shape("time_embed.0.weight")
    emb_out = shape("input_blocks.1.0.emb_layers.1.weight")[0]
    label = sd.get("label_emb.weight")
    cond_dim = shape("label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in sd else None
    return UNetConfig(
        in_channels=in_channels,
        out_channels=shape("out.2.weight")[0],
        base_channels=base,
        channel_mult=tuple(w // base for w in level_width),
        num_res_blocks=num_res,
        attention_levels=levels,
        mid_attention=mid_attention,
        num_heads=num_heads,
        head_dim=head_dim,
        num_classes=None if label is None else label.shape[0] - 1,
        cond_dim=cond_dim,
        context_dim=context_dim,
        transformer_depth=depth,
        linear_projection=linear,
        norm_groups=norm_groups,
        resnet_scale_shift=emb_out == 2 * widths[0][0],
        time_embed_dim=None if emb_dim == 4 * base else emb_dim,
        zero_init_output=False,
    )
