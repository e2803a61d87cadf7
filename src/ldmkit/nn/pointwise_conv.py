"""A 1x1 convolution of a channels_last activation as a matmul over its pixels.

For channels_last x the `[N, H, W, C]` view is free, and a 1x1 convolution is one linear map of
every pixel's channels: `F.linear` on that view, whose output viewed back is channels_last
again. Measured on an H100 with the SD UNet's shapes at batch 2 (E2; benchmarks/
small_conv_bench.py, NOTES v11), cuBLAS ran the ~30 such convolutions of a step (the
transformers' proj_in / proj_out, the decoder's skip convolutions) in 6-10 us each where cuDNN
took 8-14 us; in whole forwards the gain is within the noise (C2 forward 1.005x).

It runs where that was measured: compiled CUDA inference on channels_last input of at most
MATMUL_MAX_PIXELS output pixels (N x H x W; E2's largest is 2 x 64 x 64). With larger batches
inductor's own 1x1-as-matmul rewrite was 0.98x on the C1 forward at batch 256 (NOTES v10), so
those keep the convolution, as does training. LDMKIT_CONV1X1_MATMUL=0 (read at import) turns it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldmkit.nn.switches import switch_on

ENV_SWITCH = "LDMKIT_CONV1X1_MATMUL"
ENABLED = switch_on(ENV_SWITCH)
MATMUL_MAX_PIXELS = 8192


def conv1x1_as_matmul_enabled(x: torch.Tensor) -> bool:
    """True for a channels_last CUDA activation of at most MATMUL_MAX_PIXELS pixels (N H W) in a
    compiled graph without gradients, unless LDMKIT_CONV1X1_MATMUL=0."""
    return (ENABLED and x.dim() == 4 and x.is_cuda and torch.compiler.is_compiling()
            and not torch.is_grad_enabled() and x.shape[0] * x.shape[2] * x.shape[3] <= MATMUL_MAX_PIXELS
            and x.is_contiguous(memory_format=torch.channels_last))


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
            *, as_matmul: bool | None = None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias)` for a `[O, C, 1, 1]` weight; x: [N, C, H, W] -> [N, O, H, W].

    `as_matmul=None` takes the matmul where `conv1x1_as_matmul_enabled(x)`; True forces it (the
    output is then channels_last whatever x's layout), False forces the convolution.
    """
    if as_matmul is None:
        as_matmul = conv1x1_as_matmul_enabled(x)
    if not as_matmul:
        return F.conv2d(x, weight, bias)
    out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)  # [N, H, W, O]
    return out.permute(0, 3, 1, 2)  # [N, O, H, W], channels_last strides
