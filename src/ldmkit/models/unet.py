"""The denoising UNet (Ronneberger et al. 2015; Ho et al. 2020; Dhariwal & Nichol 2021;
Rombach et al. 2022): ResNet blocks, attention, skip connections, one conditioning embedding.

Layout (the same as diffusers' `UNet2DModel` / `UNet2DConditionModel`, so weights convert by
renaming keys, see `ldmkit.interop.diffusers_keys`):

    conv_in                                  -> skip
    level i = 0..L-1:  num_res_blocks x (ResNet [+ attention])   -> a skip after each
                       DownSample (not on the last level)         -> skip
    mid:    ResNet, attention (optional), ResNet
    level i = L-1..0:  (num_res_blocks + 1) x (concat skip, ResNet [+ attention])
                       UpSample (not on the level of full resolution)
    GroupNorm, SiLU, conv_out
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldmkit.errors import UserError
from ldmkit.models.input_dtype import check_input_dtype
from ldmkit.models.input_size import check_input_size, smallest_groups
from ldmkit.models.timestep_input import timesteps_tensor
from ldmkit.models.unet_config import UNetConfig
from ldmkit.nn import (
    DownSample,
    ResNetBlock,
    SelfAttentionBlock,
    SpatialTransformer,
    TimestepEmbedding,
    UpSample,
    group_norm,
    group_norm_silu,
    timestep_embedding,
)

__all__ = ["UNet", "UNetConfig"]


class _Level(nn.Module):
    """ResNet blocks, their attention layers (an empty list: none) and an optional resampler."""

    def __init__(
        self,
        resnets: list[nn.Module],
        attentions: list[nn.Module],
        downsample: nn.Module | None = None,
        upsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.has_attention = bool(attentions)
        if self.has_attention:
            self.attentions = nn.ModuleList(attentions)
        self.downsample = downsample
        self.upsample = upsample


class _MidBlock(nn.Module):
    def __init__(self, resnet1: nn.Module, attention: nn.Module | None, resnet2: nn.Module) -> None:
        super().__init__()
        self.resnet1 = resnet1
        if attention is not None:
            self.attention = attention
        self.has_attention = attention is not None
        self.resnet2 = resnet2


class UNet(nn.Module):
    """Predicts noise (or v, or x0: the network does not know) from a noisy latent.

    `forward(x, t, *, class_labels=None, cond=None, context=None)`:
      x: `[B, in_channels, H, W]`; t: `[B]` or scalar, discrete timestep indices (fractions allowed);
      class_labels: `[B]` int64 in `[0, num_classes]` (None = the null class `num_classes`);
      cond: `[B, cond_dim]`; context: `[B, M, context_dim]` -> `[B, out_channels, H, W]`.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise UserError(f"UNet expects a UNetConfig, got {type(config).__name__}")
        self.config = config
        c = config
        widths, emb_dim = c.block_channels, c.emb_dim

        self.time_embed = TimestepEmbedding(c.base_channels, emb_dim)
        if c.num_classes is not None:
            # One extra row: id num_classes is the learned "no class" used by classifier-free guidance.
            self.class_embed = nn.Embedding(c.num_classes + 1, emb_dim)
        if c.cond_dim is not None:
            self.cond_embed = TimestepEmbedding(c.cond_dim, emb_dim)

        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        skip_widths = [widths[0]]
        self.down_blocks = nn.ModuleList()
        ch = widths[0]
        for level, width in enumerate(widths):
            resnets, attentions = [], []
            for _ in range(c.num_res_blocks):
                resnets.append(self._resnet(ch, width))
                if level in c.attention_levels:
                    attentions.append(self._attention(width))
                ch = width
                skip_widths.append(ch)
            downsample = None
            if level != len(widths) - 1:
                downsample = DownSample(ch, use_conv=c.conv_resample, padding=1)
                skip_widths.append(ch)
            self.down_blocks.append(_Level(resnets, attentions, downsample=downsample))

        self.mid_block = _MidBlock(
            self._resnet(ch, ch), self._attention(ch) if c.mid_attention else None, self._resnet(ch, ch)
        )

        self.up_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            resnets, attentions = [], []
            for _ in range(c.num_res_blocks + 1):
                skip_width = skip_widths.pop()
                resnets.append(self._resnet(ch + skip_width, width, concat_channels=skip_width))
                if level in c.attention_levels:
                    attentions.append(self._attention(width))
                ch = width
            upsample = UpSample(ch, use_conv=c.conv_resample) if level != 0 else None
            self.up_blocks.append(_Level(resnets, attentions, upsample=upsample))
        assert not skip_widths, "every skip must be consumed exactly once"

        self.norm_out = group_norm(ch, c.norm_groups, c.norm_eps)
        self.conv_out = nn.Conv2d(ch, c.out_channels, 3, padding=1)
        # The modules at each resolution (up block i runs at level L-1-i), for the smallest input.
        levels: list[list[nn.Module]] = [[block] for block in self.down_blocks]
        levels[-1].append(self.mid_block)
        for i, block in enumerate(self.up_blocks):
            levels[len(widths) - 1 - i].append(block)
        levels[0].append(self.norm_out)
        self._level_groups = smallest_groups(levels)
        if c.zero_init_output:
            # The untrained model predicts exactly 0 (ADM's zero_module): the loss starts at the
            # target's variance and no random output scale has to be unlearnt first.
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def _resnet(self, in_ch: int, out_ch: int, concat_channels: int | None = None) -> ResNetBlock:
        c = self.config
        return ResNetBlock(
            in_ch, out_ch, c.emb_dim, dropout=c.dropout, groups=c.norm_groups, eps=c.norm_eps,
            scale_shift=c.resnet_scale_shift, concat_channels=concat_channels,
        )

    def _attention(self, channels: int) -> nn.Module:
        c = self.config
        heads, head_dim = c.heads_at(channels)
        if c.context_dim is not None:
            return SpatialTransformer(
                channels, heads, head_dim, c.context_dim, c.transformer_depth, c.linear_projection,
                groups=c.norm_groups, dropout=c.dropout,
            )
        return SelfAttentionBlock(channels, num_heads=heads, groups=c.norm_groups, eps=c.norm_eps)

    def _call(self, module: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        """Run a block, recomputing its activations in backward when checkpointing is on."""
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _attend(self, module: nn.Module, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if self.config.context_dim is not None:
            return self._call(module, h, context)
        return self._call(module, h)

    def embedding(
        self,
        t: torch.Tensor | float,
        batch: int,
        device: torch.device,
        class_labels: torch.Tensor | None,
        cond: torch.Tensor | None,
    ) -> torch.Tensor:
        """The `[B, emb_dim]` vector every ResNet block sees: time + class + cond embeddings."""
        c = self.config
        t = timesteps_tensor(t, batch, device)  # [B]
        # The sinusoid is computed in fp32 (precision matters for large t), then cast to the
        # weights' dtype so a UNet held in bf16 / fp16 for inference runs without autocast.
        weight_dtype = self.time_embed.linear_in.weight.dtype
        emb = self.time_embed(
            timestep_embedding(t, c.base_channels, flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift)
            .to(weight_dtype)
        )  # [B, emb_dim]
        if c.num_classes is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), c.num_classes, dtype=torch.long, device=device)
            if (not isinstance(class_labels, torch.Tensor) or class_labels.shape != (batch,)
                    or class_labels.is_floating_point() or class_labels.is_complex()
                    or class_labels.dtype == torch.bool):
                raise UserError(f"class_labels must be an integer tensor of shape [{batch}]")
            class_labels = class_labels.long()  # uint8 / int16 ids: the embedding takes int64 (or int32)
            if class_labels.device.type == "cpu" and not torch.compiler.is_compiling():  # free here; on a GPU, a sync
                bad = class_labels[(class_labels < 0) | (class_labels > c.num_classes)]
                if bad.numel():
                    raise UserError(f"class_labels must be ids in [0, {c.num_classes}] ({c.num_classes}: no class), "
                                    f"got {sorted(set(bad.tolist()))[:10]}")
            emb = emb + self.class_embed(class_labels)
        elif class_labels is not None:
            raise UserError("class_labels given, but this UNet has no class conditioning (num_classes=None)")
        if c.cond_dim is not None:
            if cond is None or cond.shape != (batch, c.cond_dim):
                got = None if cond is None else tuple(cond.shape)
                raise UserError(f"this UNet needs cond of shape [{batch}, {c.cond_dim}], got {got}")
            emb = emb + self.cond_embed(cond.to(weight_dtype))
        elif cond is not None:
            raise UserError("cond given, but this UNet has no vector conditioning (cond_dim=None)")
        return emb

    def _check_inputs(self, x: torch.Tensor, **others: torch.Tensor | None) -> None:
        """`UserError` naming the argument for what would fail deep inside as a shape, dtype or
        device error of some layer (all static properties: no cost, no graph break)."""
        c, weight = self.config, self.conv_in.weight
        for name, value in (("x", x), *others.items()):
            if value is not None and not isinstance(value, torch.Tensor):
                if name == "class_labels":
                    continue  # `embedding` says what they must be
                raise UserError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if value is not None and value.device != weight.device:
                raise UserError(f"{name} is on {value.device}, the UNet on {weight.device}: move it there "
                                f"({name}.to({str(weight.device)!r}))")
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise UserError(f"UNet expects x of shape [B, {c.in_channels}, H, W], got {tuple(x.shape)}")
        check_input_size(x, self._level_groups, c.conv_resample, "UNet")
        check_input_dtype(x, weight, "the UNet's input x")
        context = others.get("context")
        if c.context_dim is not None:
            if context is None or context.ndim != 3 or context.shape[-1] != c.context_dim:
                got = None if context is None else tuple(context.shape)
                raise UserError(f"this UNet needs context of shape [B, M, {c.context_dim}], got {got}")
            if context.shape[0] != x.shape[0]:  # one prompt's context for a batch: a reshape error inside
                raise UserError(f"context has batch {context.shape[0]}, x has {x.shape[0]}: one context per "
                                f"sample (context.expand({x.shape[0]}, -1, -1) shares one)")
            check_input_dtype(context, weight, "the UNet's context")
        elif context is not None:
            raise UserError("context given, but this UNet has no cross-attention (context_dim=None)")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        *,
        class_labels: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from `x` `[B, in_channels, H, W]` at timesteps `t` (a scalar or `[B]`, indices in
        [0, T)) the raw prediction `[B, out_channels, H, W]`: eps, v or x0, whichever the model was
        trained on (the network does not know; diffusion/parameterization.py reads it).
        `class_labels` `[B]` integer ids (`num_classes`: the null class of guidance; omitted, all
        null), `cond` `[B, cond_dim]`, `context` `[B, M, context_dim]` (text tokens): each is
        required exactly when the config has it, and lives on the UNet's device. Class ids are
        range-checked on the CPU only (on a GPU the check would wait for the device at every call):
        there an id past `num_classes` is CUDA's device-side assert, which ends the process's CUDA."""
        self._check_inputs(x, class_labels=class_labels, cond=cond, context=context)
        emb = self.embedding(t, x.shape[0], x.device, class_labels, cond)  # [B, emb_dim]

        h = self.conv_in(x)  # [B, C0, H, W]
        skips = [h]
        for block in self.down_blocks:
            for j, resnet in enumerate(block.resnets):
                h = self._call(resnet, h, emb)
                if block.has_attention:
                    h = self._attend(block.attentions[j], h, context)
                skips.append(h)
            if block.downsample is not None:
                h = block.downsample(h)  # [B, C, H/2, W/2]
                skips.append(h)

        mid = self.mid_block
        h = self._call(mid.resnet1, h, emb)
        if mid.has_attention:
            h = self._attend(mid.attention, h, context)
        h = self._call(mid.resnet2, h, emb)  # [B, C_last, H/2**(L-1), W/2**(L-1)]

        for block in self.up_blocks:
            for j, resnet in enumerate(block.resnets):
                # the block's input is cat([h, skip], dim=1): [B, C + C_skip, h, w]
                h = self._call(resnet, h, emb, skips.pop())
                if block.has_attention:
                    h = self._attend(block.attentions[j], h, context)
            if block.upsample is not None:
                # Match the next skip exactly, so odd input sizes work too.
                h = block.upsample(h, output_size=skips[-1].shape[-2:])  # [B, C, 2h, 2w]

        return self.conv_out(group_norm_silu(h, self.norm_out))  # [B, out_channels, H, W]
