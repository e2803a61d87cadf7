"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, without the upsampled tensor.

`conv3x3(nearest2x(x))` repeats each input pixel four times before the convolution sees it, so
each of the four output phases (even/odd row, even/odd column) only ever combines a 2x2 window
of `x`: the taps of the 3x3 kernel that land on the same input pixel can be summed first. The
result is the same function with 16 instead of 36 multiply-adds per output channel and input
pixel (16/36 = 0.44x the FLOPs; 0.47x at 32x32 for the form that computes the (H+1) x (W+1)
windows of the one-pixel border), and the 4x larger upsampled
input is never written or read. This is the "resize-convolution" of Odena et al. 2016
("Deconvolution and checkerboard artifacts", Distill) computed as a sub-pixel convolution
(Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an Efficient
Sub-Pixel Convolutional Neural Network"); the derivation is ours and is written out below.

Derivation, for rows (columns are the same). With zero padding of one, output row `2i + a`
of the 3x3 convolution reads upsampled rows `2i + a - 1`, `2i + a`, `2i + a + 1` with kernel
rows `w0, w1, w2`, and upsampled row `r` is input row `r // 2`:

    a = 0: input rows (i-1, i, i)    -> 2-tap kernel over rows (i-1, i): (w0, w1 + w2)
    a = 1: input rows (i, i, i+1)    -> 2-tap kernel over rows (i, i+1): (w0 + w1, w2)

Zero padding matches on both sides: upsampled row -1 and row 2H are padding, and so are input
rows -1 and H. A 2x2 convolution of `x` padded by one gives (H+1) x (W+1) windows; window `p`
covers input rows (p-1, p), so phase `a` of output row `2i + a` is window `i + a`. All four
phases run as one convolution with 4x the output channels (one larger GEMM instead of four).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """`[O, I, 3, 3]` -> `[4 * O, I, 2, 2]`, output channels ordered (row phase, column phase, O)."""
    w0, w1, w2 = weight.unbind(dim=2)  # kernel rows, each [O, I, 3]
    by_row_phase = (torch.stack([w0, w1 + w2], dim=2), torch.stack([w0 + w1, w2], dim=2))  # [O, I, 2, 3]
    phases = []
    for rows in by_row_phase:
        c0, c1, c2 = rows.unbind(dim=3)  # kernel columns, each [O, I, 2]
        phases.append(torch.stack([c0, c1 + c2], dim=3))  # column phase 0: [O, I, 2, 2]
        phases.append(torch.stack([c0 + c1, c2], dim=3))  # column phase 1
    return torch.cat(phases, dim=0)  # [4 * O, I, 2, 2]


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`, computed
    on `x` directly. `x: [B, I, H, W] -> [B, O, 2H, 2W]`, in `x`'s memory format."""
    return upsample2x_phases_with(x, phase_kernels(weight), None if bias is None else bias.repeat(4))


def upsample2x_phases_with(x: torch.Tensor, phase_weight: torch.Tensor, phase_bias: torch.Tensor | None
                           ) -> torch.Tensor:
    """`upsample2x_conv3x3` from its phase kernels (`phase_kernels(weight)`, `bias.repeat(4)`),
    computed beforehand. `x: [B, I, H, W] -> [B, O, 2H, 2W]`, in `x`'s memory format."""
    batch, _, height, width = x.shape
    out_channels = phase_weight.shape[0] // 4
    z = F.conv2d(x, phase_weight, phase_bias, padding=1)  # [B, 4*O, H+1, W+1]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # NHWC: interleave along the channel-last axes so the result stays channels_last.
        z = z.permute(0, 2, 3, 1).unflatten(3, (2, 2, out_channels))  # [B, H+1, W+1, 2, 2, O]
        rows = [torch.stack([z[:, a:a + height, b:b + width, a, b] for b in (0, 1)], dim=3)
                for a in (0, 1)]  # each [B, H, W, 2, O]
        y = torch.stack(rows, dim=2)  # [B, H, 2, W, 2, O]
        return y.reshape(batch, 2 * height, 2 * width, out_channels).permute(0, 3, 1, 2)  # [B, O, 2H, 2W]
    z = z.unflatten(1, (2, 2, out_channels))  # [B, 2, 2, O, H+1, W+1]
    rows = [torch.stack([z[:, a, b, :, a:a + height, b:b + width] for b in (0, 1)], dim=-1)
            for a in (0, 1)]  # each [B, O, H, W, 2]
    y = torch.stack(rows, dim=3)  # [B, O, H, 2, W, 2]
    return y.reshape(batch, out_channels, 2 * height, 2 * width)  # [B, O, 2H, 2W]


# Nearest 2x upsampling is the transposed convolution with the kernel [1, 1] and stride 2, so
# conv3x3(nearest2x(x)) is one transposed convolution, stride 2, padding 1, with the 4-tap kernel
# that combines the two. PyTorch's transposed convolution adds x[r] * K[k] into output row
# y = 2r - 1 + k (k = 0..3), so by the phase table above output row 2i (a = 0) takes
# K[1] = w1 + w2 from row i and K[3] = w0 from row i-1, and row 2i+1 takes K[2] = w0 + w1 from
# row i and K[0] = w2 from row i+1:  K = [w2, w1 + w2, w0 + w1, w0] = _TAPS_3_TO_4 @ w, per axis.
_TAPS_3_TO_4 = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def transposed_kernel(weight: torch.Tensor) -> torch.Tensor:
    """`[O, I, 3, 3]` conv3x3 weights -> `[I, O, 4, 4]` weights of `conv_transpose2d(stride=2,
    padding=1)` computing `conv3x3(nearest2x(x))`."""
    taps = weight.new_tensor(_TAPS_3_TO_4)  # [4, 3]
    kernel = torch.einsum("ka,oiab,lb->oikl", taps, weight, taps)  # [O, I, 4, 4]
    return kernel.transpose(0, 1)  # conv_transpose2d's weight is [in, out, kH, kW]


def upsample2x_conv3x3_transposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                                  ) -> torch.Tensor:
    """The same function as `upsample2x_conv3x3`, as one transposed convolution: the same 16
    multiply-adds per output channel and input pixel, written straight into the interleaved
    output (no interleaving pass). `x: [B, I, H, W] -> [B, O, 2H, 2W]`."""
    return upsample2x_transposed_with(x, transposed_kernel(weight), bias)


def upsample2x_transposed_with(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`upsample2x_conv3x3_transposed` from its kernel (`transposed_kernel(weight)`), computed
    beforehand. `x: [B, I, H, W] -> [B, O, 2H, 2W]`."""
    return F.conv_transpose2d(x, kernel, bias, stride=2, padding=1)
