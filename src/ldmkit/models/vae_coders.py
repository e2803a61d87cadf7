"""Encoder and decoder of the KL autoencoder (Esser et al. 2021; Rombach et al. 2022, appendix G).

Both are ResNet stacks without any embedding, with one self-attention block in the middle.
The layout matches diffusers' `Encoder` / `Decoder`, so weights convert by renaming keys.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.nn import DownSample, ResNetBlock, SelfAttentionBlock, UpSample, group_norm, group_norm_silu


class _Level(nn.Module):
    def __init__(self, resnets: list[nn.Module], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        setattr(self, name, resample)
        self.resample_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, H, W] -> [B, C_out, H', W'] (H' = H/2 down, 2H up, H at the last level)
        for resnet in self.resnets:
            x = resnet(x)
        resample = getattr(self, self.resample_name)
        return x if resample is None else resample(x)


class _MidBlock(nn.Module):
    """ResNet -> single-head self-attention (optional) -> ResNet, at the lowest resolution."""

    def __init__(self, channels: int, groups: int, eps: float, attention: bool) -> None:
        super().__init__()
        self.resnet1 = ResNetBlock(channels, channels, groups=groups, eps=eps)
        self.attention = SelfAttentionBlock(channels, num_heads=1, groups=groups, eps=eps) if attention else None
        self.resnet2 = ResNetBlock(channels, channels, groups=groups, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, h, w] -> [B, C, h, w]
        x = self.resnet1(x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnet2(x)


class Encoder(nn.Module):
    """images `[B, in_ch, H, W]` -> moments `[B, out_ch, H/f, W/f]`, f = 2**(levels-1)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        block_channels: tuple[int, ...],
        num_res_blocks: int,
        groups: int,
        eps: float,
        mid_attention: bool,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, block_channels[0], 3, padding=1)
        levels, ch = [], block_channels[0]
        for i, width in enumerate(block_channels):
            resnets = []
            for _ in range(num_res_blocks):
                resnets.append(ResNetBlock(ch, width, groups=groups, eps=eps))
                ch = width
            last = i == len(block_channels) - 1
            # padding=0: the asymmetric (0, 1, 0, 1) pad of the SD autoencoder, so its weights load.
            levels.append(_Level(resnets, None if last else DownSample(ch, padding=0), "downsample"))
        self.down_blocks = nn.ModuleList(levels)
        self.mid_block = _MidBlock(ch, groups, eps, mid_attention)
        self.norm_out = group_norm(ch, groups, eps)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, C0, H, W]
        for level in self.down_blocks:
            h = level(h)  # [B, Ci, H/2**i, W/2**i] (halved after each level but the last)
        h = self.mid_block(h)
        return self.conv_out(group_norm_silu(h, self.norm_out))  # [B, out_ch, H/f, W/f]


class Decoder(nn.Module):
    """latents `[B, in_ch, h, w]` -> images `[B, out_ch, h*f, w*f]`; num_res_blocks + 1 ResNets per level."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        block_channels: tuple[int, ...],
        num_res_blocks: int,
        groups: int,
        eps: float,
        mid_attention: bool,
    ) -> None:
        super().__init__()
        ch = block_channels[-1]
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.mid_block = _MidBlock(ch, groups, eps, mid_attention)
        levels = []
        for i, width in enumerate(reversed(block_channels)):
            resnets = []
            for _ in range(num_res_blocks + 1):
                resnets.append(ResNetBlock(ch, width, groups=groups, eps=eps))
                ch = width
            last = i == len(block_channels) - 1
            levels.append(_Level(resnets, None if last else UpSample(ch), "upsample"))
        self.up_blocks = nn.ModuleList(levels)
        self.norm_out = group_norm(ch, groups, eps)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.features(z))  # [B, out_ch, H, W]

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Everything but the final convolution: `[B, C_in, h, w]` -> `[B, C_first, H, W]`, what
        `conv_out` reads (the VAE stage's GAN phase differentiates that last layer alone)."""
        h = self.mid_block(self.conv_in(z))  # [B, C_last, h, w]
        for level in self.up_blocks:
            h = level(h)  # doubled after each level but the last
        return group_norm_silu(h, self.norm_out)  # [B, C_first, H, W]
