"""Halving and doubling the spatial resolution between UNet / autoencoder levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.errors import UserError
from ldmkit.nn.arguments import check_positive_ints
from ldmkit.nn.derived_weights import derived, layout_of
from ldmkit.nn.upsample_conv import (
    phase_kernels,
    transposed_kernel,
    upsample2x_conv3x3,
    upsample2x_conv3x3_transposed,
    upsample2x_phases_with,
    upsample2x_transposed_with,
)

# How UpSample computes nearest 2x + conv3x3 (nn/upsample_conv.py): "phase" (the four phase
# convolutions as one, then an interleaving pass), "transposed" (one stride-2 transposed
# convolution, no interleaving pass), or "auto": transposed from TRANSPOSED_MIN_PIXELS input
# pixels, phase below. Both do the same 16 multiply-adds; measured on an H100
# (benchmarks/upsample_bench.py, NOTES.md v8), cuDNN's transposed convolution is 1.24x faster at
# 128x128 -> 256x256 (the decoder's last upsampling), level at 64x64, slower at 32x32.
UPSAMPLE_FORM = "auto"
TRANSPOSED_MIN_PIXELS = 128 * 128


def upsample_form(x: torch.Tensor) -> str:
    """"phase" or "transposed": how `UpSample` computes x's exact 2x upsampling (UPSAMPLE_FORM)."""
    if UPSAMPLE_FORM != "auto":
        return UPSAMPLE_FORM
    return "transposed" if x.shape[-2] * x.shape[-1] >= TRANSPOSED_MIN_PIXELS else "phase"


class DownSample(nn.Module):
    """Halve H and W with a stride-2 conv3x3, or a 2x2 average pool (`use_conv=False`).

    `padding=1` pads symmetrically (the UNet). `padding=0` pads only right and bottom by one,
    `(0, 1, 0, 1)`, as the Stable Diffusion autoencoder does. Both give H/2 x W/2 for even sizes
    (for odd H, padding=1 gives ceil(H/2), padding=0 and the pool floor(H/2)), but the weights of
    each only make sense with their own padding.
    `x: [B, C, H, W] -> [B, out_channels, H/2, W/2]` (even H, W).
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        use_conv: bool = True,
        padding: int = 1,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        check_positive_ints("DownSample", channels=channels, out_channels=out_channels)
        if padding not in (0, 1):
            raise UserError(f"DownSample padding must be 1 (symmetric) or 0 (asymmetric (0,1,0,1)), got {padding}")
        if not use_conv and out_channels != channels:
            raise UserError("DownSample(use_conv=False) is an average pool and cannot change the channel count")
        self.padding = padding
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W] -> [B, out_channels, H/2, W/2]
        _check_channels(self, x)
        if not self.use_conv:
            return F.avg_pool2d(x, 2)
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # [B, C, H+1, W+1]
        return self.conv(x)  # [B, out_channels, H/2, W/2]


def _check_channels(layer: nn.Module, x: torch.Tensor) -> None:
    """Name the layer and its channels, not a derived kernel's shape the user never made. Without a
    conv the shape is checked too: pooling and interpolation read a 3-D [C, H, W] as unbatched or
    as 1-D [N, C, L] (UpSample would then double W only)."""
    channels = layer.conv.in_channels if layer.use_conv else None
    if x.ndim != 4 or channels is not None and x.shape[1] != channels:
        raise UserError(f"{type(layer).__name__} expects x of shape [B, {channels or 'C'}, H, W], "
                        f"got {tuple(x.shape)}")


class UpSample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a conv3x3 (`use_conv=True`) to smooth
    the blocky result (Odena et al. 2016, "Deconvolution and checkerboard artifacts").

    `forward(x, output_size)` may name the exact target size, so a UNet fed an odd size can
    match the skip connection it concatenates next.
    `x: [B, C, H, W] -> [B, out_channels, 2H, 2W]`.
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, use_conv: bool = True) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        check_positive_ints("UpSample", channels=channels, out_channels=out_channels)
        if not use_conv and out_channels != channels:
            raise UserError("UpSample(use_conv=False) cannot change the channel count")
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        # x: [B, C, H, W] -> [B, out_channels, 2H, 2W] (or output_size)
        _check_channels(self, x)
        doubled = output_size is None or tuple(output_size) == (2 * x.shape[-2], 2 * x.shape[-1])
        if self.use_conv and doubled:
            # The same function at 0.44-0.47x the FLOPs, never materialising the upsampled tensor
            # (nn/upsample_conv.py derives both forms).
            if upsample_form(x) == "transposed":
                kernel = derived(self, "transposed_weight")
                if kernel is None:
                    return upsample2x_conv3x3_transposed(x, self.conv.weight, self.conv.bias)
                return upsample2x_transposed_with(x, kernel, self.conv.bias)  # [B, out_channels, 2H, 2W]
            kernel = derived(self, "phase_weight")
            if kernel is None:
                return upsample2x_conv3x3(x, self.conv.weight, self.conv.bias)
            return upsample2x_phases_with(x, kernel, derived(self, "phase_bias"))  # [B, out_channels, 2H, 2W]
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # [B, C, 2H, 2W]
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")
        return self.conv(x) if self.use_conv else x

    # nn/derived_weights.py: the kernels above, computed once per generation job
    def derived_sources(self) -> list[torch.Tensor]:
        return [p for p in (self.conv.weight, self.conv.bias) if p is not None] if self.use_conv else []

    def derived_weights(self) -> dict[str, torch.Tensor]:
        if not self.use_conv:
            return {}
        weight, bias = self.conv.weight, self.conv.bias
        layout = layout_of(weight)
        kernels = {"phase_weight": phase_kernels(weight).contiguous(memory_format=layout),
                   "transposed_weight": transposed_kernel(weight).contiguous(memory_format=layout)}
        if bias is not None:
            kernels["phase_bias"] = bias.repeat(4)
        return kernels
