"""Multi-head attention: the GroupNorm self-attention block of DDPM/ADM and SD's cross-attention.

Tokens are kept as `[B, N, C]` (N = H*W for images); scaled dot-product attention itself runs
on `[B, heads, N, head_dim]` through `torch.nn.functional.scaled_dot_product_attention`, which
picks the fastest kernel the device has (cuDNN's on Hopper, benchmarks/NOTES.md v5); compiled CUDA
training calls cuDNN's kernels through nn/attention_op.py instead, on `[B, N, heads*d]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.errors import UserError
from ldmkit.nn import context_kv
from ldmkit.nn.arguments import check_positive_ints
from ldmkit.nn.attention_op import attention, attention_op_enabled
from ldmkit.nn.norm import group_norm
from ldmkit.nn.norm_channels_last import apply_group_norm


def resolve_heads(channels: int, num_heads: int | None, head_dim: int | None) -> tuple[int, int]:
    """Return `(heads, head_dim)` from either one of them (neither given: a single head)."""
    if num_heads is None and head_dim is None:
        return 1, channels
    if num_heads is not None and num_heads < 1 or head_dim is not None and head_dim < 1:
        raise UserError(f"num_heads and head_dim must be positive, got {num_heads} and {head_dim}")
    heads = num_heads if num_heads is not None else channels // head_dim
    dim = head_dim if head_dim is not None else channels // num_heads
    if heads * dim != channels:
        raise UserError(
            f"attention over {channels} channels cannot use num_heads={num_heads}, head_dim={head_dim}: "
            "heads * head_dim must equal the channel count"
        )
    return heads, dim


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017, eq. 1).

    q: [B, N, heads*d], k and v: [B, M, heads*d] -> [B, N, heads*d]. In compiled CUDA training
    this is one operator pair around cuDNN's attention (nn/attention_op.py).
    """
    if attention_op_enabled(q, k, v, heads):
        return attention(q, k, v, heads)
    b, n, inner = q.shape
    m = k.shape[1]
    d = inner // heads
    q = q.reshape(b, n, heads, d).transpose(1, 2)  # [B, heads, N, d]
    k = k.reshape(b, m, heads, d).transpose(1, 2)  # [B, heads, M, d]
    v = v.reshape(b, m, heads, d).transpose(1, 2)  # [B, heads, M, d]
    out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d]
    return out.transpose(1, 2).reshape(b, n, inner)


class SelfAttentionBlock(nn.Module):
    """GroupNorm -> q, k, v (linear, with bias) -> multi-head attention -> linear -> + input.

    The spatial self-attention of DDPM (Ho et al. 2020, appendix B) and of the SD autoencoder;
    `x: [B, C, H, W] -> [B, C, H, W]`.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int | None = None,
        head_dim: int | None = None,
        groups: int = 32,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_positive_ints("SelfAttentionBlock", channels=channels, groups=groups)
        self.channels = channels
        self.heads, self.head_dim = resolve_heads(channels, num_heads, head_dim)
        self.norm = group_norm(channels, groups, eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W] -> [B, C, H, W]
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise UserError(f"SelfAttentionBlock expects x of shape [B, {self.channels}, H, W], got {tuple(x.shape)}")
        b, c, h, w = x.shape
        # flatten + transpose is a free view for channels_last input, a copy otherwise.
        tokens = apply_group_norm(x, self.norm).flatten(2).transpose(1, 2)  # [B, HW, C]
        out = multi_head_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens), self.heads)
        out = self.to_out(out)  # [B, HW, C]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class CrossAttention(nn.Module):
    """Multi-head attention with queries from `x` and keys/values from `context` (Rombach et al.
    2022, sec. 3.3; self-attention when `context` is None).

    As in Stable Diffusion, q/k/v have no bias and the output projection has one.
    `x: [B, N, query_dim]`, `context: [B, M, context_dim]` -> `[B, N, query_dim]`.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        head_dim: int = 64,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        # keys and values from a context (not from x): nn/context_kv.py may cache them per job
        self.is_cross = context_dim is not None
        self.context_dim = context_dim if context_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(self.context_dim, inner, bias=False)
        self.to_v = nn.Linear(self.context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, N, query_dim], context: [B, M, context_dim] -> [B, N, query_dim]
        kv = context_kv.cached(self, context) if self.is_cross and context is not None else None
        context = x if context is None else context
        if context.shape[-1] != self.context_dim:
            raise UserError(f"context has width {context.shape[-1]}, this attention expects {self.context_dim}")
        k, v = self.project_context(context) if kv is None else kv  # [B, M, inner] each
        out = multi_head_attention(self.to_q(x), k, v, self.heads)
        return self.dropout(self.to_out(out))  # [B, N, query_dim]

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # context: [B, M, context_dim] -> keys, values: [B, M, inner]
        return self.to_k(context), self.to_v(context)
