"""The residual convolution block of DDPM / ADM / Stable Diffusion, with an embedding input."""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.errors import UserError
from ldmkit.nn.arguments import check_positive_ints
from ldmkit.nn.derived_weights import derived, layout_of
from ldmkit.nn.norm import group_norm
from ldmkit.nn.norm_channels_last import apply_group_norm, channels_last_norm_enabled, group_norm_channels_last
from ldmkit.nn.norm_silu import fused_group_norm_enabled, group_norm_silu
from ldmkit.nn.pointwise_conv import conv1x1


class ResNetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> (+ embedding) -> GroupNorm -> SiLU -> dropout -> conv3x3,
    plus a skip path (He et al. 2016; the pre-activation form of Ho et al. 2020, appendix B).

    The embedding (timestep, class, conditioning vector: one `[B, emb_dim]` tensor) reaches the
    block through SiLU -> Linear. It is either added after the first conv, or, with
    `scale_shift=True`, modulates the second norm as FiLM (Perez et al. 2018; ADM's "scale-shift
    norm", Dhariwal & Nichol 2021, sec. 3):  h = GroupNorm(h) * (1 + scale) + shift.

    The skip is the identity when channels match, else a 1x1 conv (or a 3x3 conv with
    `conv_shortcut=True`). `zero_init=True` zero-initialises the last conv so the block starts
    as the identity, which keeps deep stacks stable early in training (Goyal et al. 2017).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        emb_dim: int | None = None,
        *,
        dropout: float = 0.0,
        groups: int = 32,
        eps: float = 1e-5,
        scale_shift: bool = False,
        conv_shortcut: bool = False,
        zero_init: bool = False,
        concat_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_ch = in_ch if out_ch is None else out_ch
        check_positive_ints("ResNetBlock", in_ch=in_ch, out_ch=out_ch, groups=groups)
        if emb_dim is not None:
            check_positive_ints("ResNetBlock", emb_dim=emb_dim)
        self.in_ch, self.out_ch, self.emb_dim = in_ch, out_ch, emb_dim
        # The width of the `concat` input a UNet decoder passes (its skip connection), when known:
        # the skip convolution's weight slices per input part are then cached for generation
        # (nn/derived_weights.py). Any split still works without it.
        if concat_channels is not None and not 0 < concat_channels < in_ch:
            raise UserError(f"concat_channels must lie in (0, {in_ch}), got {concat_channels}")
        self.concat_channels = concat_channels
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_ch, groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        if emb_dim is not None:
            # FiLM needs a scale and a shift per channel, the additive form only a shift.
            self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        elif scale_shift:
            raise UserError("ResNetBlock(scale_shift=True) needs emb_dim: the scale and shift come from it")
        self.norm2 = group_norm(out_ch, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)
        if in_ch != out_ch or conv_shortcut:
            kernel = 3 if conv_shortcut else 1
            self.skip = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
        else:
            self.skip = nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                concat: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, in_ch, H, W], emb: [B, emb_dim] -> [B, out_ch, H, W]
        # concat: [B, C2, H, W] or None: the block's input is cat([x, concat], dim=1) (a UNet skip
        # connection); x then holds in_ch - C2 channels.
        if x.ndim != 4 or concat is not None and concat.ndim != 4:
            if concat is None:
                raise UserError(f"ResNetBlock expects x of shape [B, {self.in_ch}, H, W], got {tuple(x.shape)}")
            raise UserError(f"ResNetBlock expects x and concat of shape [B, C, H, W], {self.in_ch} channels "
                            f"together, got {tuple(x.shape)} and {tuple(concat.shape)}")
        joined = x.shape[1] + (0 if concat is None else concat.shape[1])
        if joined != self.in_ch:
            raise UserError(f"ResNetBlock expects {self.in_ch} input channels, got {joined}")
        if (emb is None) != (self.emb_dim is None):
            raise UserError(
                "ResNetBlock was built with emb_dim=None and got an embedding"
                if emb is not None
                else f"ResNetBlock was built with emb_dim={self.emb_dim}: pass an embedding [B, {self.emb_dim}]"
            )
        if emb is not None and tuple(emb.shape) != (x.shape[0], self.emb_dim):
            raise UserError(f"ResNetBlock expects an embedding of shape [{x.shape[0]}, {self.emb_dim}], "
                            f"got {tuple(emb.shape)}")
        # GroupNorm -> SiLU pairs go through group_norm_silu: Triton kernels in compiled CUDA graphs
        # (nn/norm_silu.py says where), the channels_last form in the rest of compiled inference.
        fused = fused_group_norm_enabled(x)
        if concat is not None and not fused and channels_last_norm_enabled(x):
            # Compiled inference: the joined tensor is never built. norm1 takes each part's
            # statistics from the part, and a 1x1 (or 3x3) skip convolution is the sum of one
            # convolution per part, as a convolution is linear in its input channels.
            h = group_norm_channels_last(x, self.norm1, silu=True, concat=concat)
            skip = self._skip_of_parts(x, concat)
        else:
            if concat is not None:
                x = torch.cat([x, concat], dim=1)  # [B, in_ch, H, W]
            h = group_norm_silu(x, self.norm1, fused=fused)
            skip = self._skip(x, self.skip.weight, self.skip.bias) if isinstance(self.skip, nn.Conv2d) else x
        e = None if emb is None else self.emb_proj(self.act(emb))  # [B, out_ch or 2*out_ch]
        if self.scale_shift:
            scale, shift = e[:, :, None, None].chunk(2, dim=1)
            h = self.act(apply_group_norm(self.conv1(h), self.norm2) * (1 + scale) + shift)
        elif fused and self.conv1.bias is not None:
            # conv1's bias joins norm2's per-channel `add` (silu(norm2(conv(h) + bias + e))):
            # inductor adds a convolution's bias in a kernel of its own, a whole pass over the
            # output, which the Triton reductions (opaque to it) cannot absorb.
            h = self.conv1._conv_forward(h, self.conv1.weight, None)  # [B, out_ch, H, W], no bias
            add = self.conv1.bias.expand(h.shape[0], -1)  # [B, out_ch]
            h = group_norm_silu(h, self.norm2, add if e is None else e + add, fused=True)
        else:
            h = group_norm_silu(self.conv1(h), self.norm2, e, fused=fused)  # silu(norm2(h + e)), h + e not stored
        h = self.conv2(self.dropout(h))  # [B, out_ch, H, W]
        return skip + h

    def _skip_of_parts(self, x: torch.Tensor, concat: torch.Tensor) -> torch.Tensor:
        # self.skip(cat([x, concat], dim=1)) without the cat: [B, out_ch, H, W]
        if not isinstance(self.skip, nn.Conv2d):
            return torch.cat([x, concat], dim=1)  # the identity
        c1, w = x.shape[1], self.skip.weight  # w: [out_ch, in_ch, k, k]
        w_x, w_concat = derived(self, "skip_weight_x"), derived(self, "skip_weight_concat")
        if w_x is None or w_x.shape[1] != c1:
            # slices of w: cuDNN copies each into contiguous memory first, at every call
            w_x, w_concat = w[:, :c1], w[:, c1:]
        return self._skip(x, w_x, self.skip.bias) + self._skip(concat, w_concat, None)

    def _skip(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # the skip convolution with this weight: 1x1 as a matmul in compiled CUDA inference
        # (nn/pointwise_conv.py)
        if weight.shape[-1] == 1:
            return conv1x1(x, weight, bias)
        return self.skip._conv_forward(x, weight, bias)

    # nn/derived_weights.py: the skip convolution's weight per input part, made contiguous once
    def derived_sources(self) -> list[torch.Tensor]:
        return [self.skip.weight] if isinstance(self.skip, nn.Conv2d) else []

    def derived_weights(self) -> dict[str, torch.Tensor]:
        if self.concat_channels is None or not isinstance(self.skip, nn.Conv2d):
            return {}
        w = self.skip.weight
        c1 = self.in_ch - self.concat_channels
        layout = layout_of(w)
        return {"skip_weight_x": w[:, :c1].contiguous(memory_format=layout),
                "skip_weight_concat": w[:, c1:].contiguous(memory_format=layout)}
