"""The spatial transformer of Stable Diffusion: image tokens attend to themselves and to a context."""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.errors import UserError
from ldmkit.nn.attention import CrossAttention
from ldmkit.nn.geglu import geglu
from ldmkit.nn.norm import group_norm
from ldmkit.nn.norm_channels_last import apply_group_norm
from ldmkit.nn.pointwise_conv import conv1x1


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020, eq. 6): (x W) * GELU(x V), then a linear back.

    `proj_in` computes both halves at once: the first half is the value, the second the gate.
    `x: [B, N, dim] -> [B, N, dim]`.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, N, dim] -> [B, N, dim]
        h = self.proj_in(x)  # [B, N, 2 * inner]: value, then gate
        return self.proj_out(self.dropout(geglu(h)))  # geglu: [B, N, inner]


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: LayerNorm -> self-attention, LayerNorm -> cross-attention
    (omitted when `context_dim` is None), LayerNorm -> GEGLU feed-forward, each with a residual
    (Rombach et al. 2022, sec. 3.3; Vaswani et al. 2017). `x: [B, N, dim] -> [B, N, dim]`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, None, heads, head_dim, dropout=dropout)
        self.has_cross_attention = context_dim is not None
        if self.has_cross_attention:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = CrossAttention(dim, context_dim, heads, head_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, N, dim], context: [B, M, context_dim] -> [B, N, dim]
        x = x + self.attn1(self.norm1(x))
        if self.has_cross_attention:
            if context is None:
                raise UserError("this transformer block has cross-attention: pass a context [B, M, context_dim]")
            x = x + self.attn2(self.norm2(x), context)
        elif context is not None:
            raise UserError("this transformer block was built without cross-attention (context_dim=None)")
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm -> proj_in -> `depth` TransformerBlocks over the H*W tokens -> proj_out -> + input.

    proj_in / proj_out are 1x1 convs (SD 1.x) or, with `linear_projection=True`, linear layers
    applied to the tokens (SD 2.x); both are the same map, only the weight layout differs.
    `x: [B, C, H, W]`, `context: [B, M, context_dim]` -> `[B, C, H, W]`.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        context_dim: int | None,
        depth: int = 1,
        linear_projection: bool = False,
        *,
        groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.channels, self.inner = channels, inner
        self.linear_projection = linear_projection
        # eps 1e-6 as in the SD transformer (not the 1e-5 of its ResNet blocks).
        self.norm = group_norm(channels, groups, 1e-6)
        if linear_projection:
            self.proj_in: nn.Module = nn.Linear(channels, inner)
            self.proj_out: nn.Module = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, channels, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim, dropout=dropout) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, C, H, W], context: [B, M, context_dim] -> [B, C, H, W]
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise UserError(f"SpatialTransformer expects x of shape [B, {self.channels}, H, W], got {tuple(x.shape)}")
        b, c, h, w = x.shape
        hidden = apply_group_norm(x, self.norm)
        if self.linear_projection:
            tokens = self.proj_in(hidden.flatten(2).transpose(1, 2))  # [B, HW, inner]
        else:  # a 1x1 conv, as a matmul in compiled CUDA inference (nn/pointwise_conv.py)
            tokens = conv1x1(hidden, self.proj_in.weight, self.proj_in.bias)  # [B, inner, H, W]
            tokens = tokens.flatten(2).transpose(1, 2)  # [B, HW, inner]
        for block in self.blocks:
            tokens = block(tokens, context)  # [B, HW, inner]
        if self.linear_projection:
            out = self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)
        else:
            out = conv1x1(tokens.transpose(1, 2).reshape(b, self.inner, h, w),
                          self.proj_out.weight, self.proj_out.bias)  # [B, C, H, W]
        return x + out
