"""GroupNorm (optionally + SiLU) on channels_last activations, in the order their memory holds them.

PyTorch's GroupNorm, as inductor decomposes it, views x as [N, G, C/G * H * W]. For a
channels_last tensor that view is a copy (fused into the kernels, the "clone" in their names),
and the statistics reduction then walks each group pixel by pixel, C elements apart, while the
apply kernel transposes as it writes. In the compiled UNet forwards these kernels were half the
GPU time (benchmarks/NOTES.md v8, v9).

Here the same function is written over the [N, H*W, C] view, which is free for channels_last x:

- per-channel mean and variance over the pixels (a reduction whose outputs lie along the
  contiguous axis, so neighbouring threads read neighbouring channels);
- group statistics from the channels' (equal counts, Chan, Golub & LeVeque 1979):
  mean_g = mean_c(mean_c),  var_g = mean_c(var_c + (mean_c - mean_g)^2);
- y = x * scale[n, c] + shift[n, c] (then SiLU), with scale = w_c / sqrt(var_g + eps) and
  shift = b_c - (mean_g - add_c) * scale (Wu & He 2018, eq. 1-2, for x + add).

It runs in compiled CUDA inference on channels_last activations (`channels_last_norm_enabled`);
LDMKIT_CHANNELS_LAST_GROUPNORM=0 (read at import) turns it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.nn.switches import switch_on

ENV_SWITCH = "LDMKIT_CHANNELS_LAST_GROUPNORM"
ENABLED = switch_on(ENV_SWITCH)


def channels_last_norm_enabled(x: torch.Tensor) -> bool:
    """True where GroupNorm takes this module's form: a channels_last CUDA activation in a
    compiled graph that records no gradients (training steps take the Triton kernels of
    `norm_silu`), unless LDMKIT_CHANNELS_LAST_GROUPNORM=0."""
    return (ENABLED and x.dim() == 4 and x.is_cuda and torch.compiler.is_compiling()
            and not torch.is_grad_enabled() and x.is_contiguous(memory_format=torch.channels_last))


def group_norm_channels_last(x: torch.Tensor, norm: nn.GroupNorm, add: torch.Tensor | None = None,
                             *, silu: bool = False, concat: torch.Tensor | None = None) -> torch.Tensor:
    """`norm(x + add[:, :, None, None])`, then SiLU if `silu`; the output in x's dtype, in x's
    layout (channels_last when `concat` is given).

    x: [N, C, H, W] (any layout; written for channels_last), add: [N, C] or None.
    concat: [N, C2, H, W] or None: normalise `cat([x, concat], dim=1)` (then C counts both) with
    each part's statistics taken from the part itself. The UNet's decoder joins each skip
    connection this way: a reduction over the joined tensor, fused with the join, read it at a
    fifth of the bandwidth (benchmarks/NOTES.md v9).
    """
    parts = [x] if concat is None else [x, concat]
    N, _, H, W = x.shape
    C = sum(p.shape[1] for p in parts)
    groups = norm.num_groups
    cpg = C // groups
    acc = torch.promote_types(x.dtype, torch.float32)  # statistics in float32 at least
    # [N, HW, C_part] views (dense along HW and C for channels_last parts)
    tokens = [p.permute(0, 2, 3, 1).reshape(N, H * W, p.shape[1]).to(acc) for p in parts]
    moments = [torch.var_mean(t, dim=1, correction=0) for t in tokens]  # ([N, C_part], [N, C_part])
    var_c = torch.cat([v for v, _ in moments], dim=1)  # [N, C], of x
    mean_c = torch.cat([m for _, m in moments], dim=1)
    if add is not None:
        mean_c = mean_c + add.to(acc)  # of x + add; the variance does not move
    mean_g = mean_c.view(N, groups, cpg).mean(dim=2, keepdim=True)  # [N, G, 1]
    var_g = (var_c.view(N, groups, cpg) + (mean_c.view(N, groups, cpg) - mean_g).square()).mean(dim=2, keepdim=True)
    rstd = torch.rsqrt(var_g + norm.eps).expand(N, groups, cpg).reshape(N, C)  # [N, C]
    mean = mean_g.expand(N, groups, cpg).reshape(N, C)  # [N, C]
    scale = rstd if norm.weight is None else rstd * norm.weight.to(acc)
    center = mean if add is None else mean - add.to(acc)  # (x + add) - mean = x - center
    shift = -center * scale if norm.bias is None else norm.bias.to(acc) - center * scale
    joined = tokens[0] if concat is None else torch.cat(tokens, dim=2)  # [N, HW, C]
    y = joined * scale[:, None, :] + shift[:, None, :]  # [N, HW, C]
    if silu:
        y = F.silu(y)
    return y.to(x.dtype).view(N, H, W, C).permute(0, 3, 1, 2)  # [N, C, H, W]


def apply_group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """`norm(x)`, in this module's form where `channels_last_norm_enabled(x)`."""
    return group_norm_channels_last(x, norm) if channels_last_norm_enabled(x) else norm(x)
