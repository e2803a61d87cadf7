"""Timestep features: sinusoidal encoding and the MLP that lifts it to the embedding width."""

from __future__ import annotations

import math

import torch
from torch import nn

from ldmkit.errors import UserError


def timestep_embedding(
    t: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, `[B] -> [B, dim]` in float32.

    Frequencies follow the Transformer position encoding (Vaswani et al. 2017, sec. 3.5) as used
    for timesteps by DDPM (Ho et al. 2020, appendix B):

        f_i = max_period ** (-i / (dim/2 - freq_shift)),   i = 0 .. dim/2 - 1
        emb = [sin(t f), cos(t f)]   (or [cos, sin] when `flip_sin_to_cos`, the ADM / diffusers
                                      default, which checkpoints of those projects expect)

    An odd `dim` gets one zero column so the width is exactly `dim`.
    """
    if dim < 2:
        raise UserError(f"timestep_embedding needs dim >= 2, got {dim}")
    half = dim // 2
    if half - freq_shift <= 0:
        raise UserError(f"freq_shift={freq_shift} must be smaller than dim/2={half}")
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise UserError(f"timesteps must be a scalar or a 1-D tensor [B], got shape {tuple(t.shape)}")
    # float32 whatever the autocast state: bf16 cannot resolve t * f for t near 1000.
    index = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * index / (half - freq_shift))
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # [B, half]
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # [B, 2*half]
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear, lifting a feature vector to the embedding width.

    Used for the sinusoidal timestep features and, with another input width, for a free
    conditioning vector (the seed's "latent"), whose output is added to the timestep embedding.
    """

    def __init__(self, in_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.linear_in = nn.Linear(in_dim, emb_dim)
        self.act = nn.SiLU()
        self.linear_out = nn.Linear(emb_dim, emb_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: [B, in_dim] -> [B, emb_dim]
        return self.linear_out(self.act(self.linear_in(features)))
