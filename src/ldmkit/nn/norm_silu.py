"""GroupNorm followed by SiLU, `silu(GroupNorm(x + add))`, with its reductions as Triton kernels
on CUDA.

Every ResNet block runs this pair twice, and in a compiled training step inductor's Triton
kernels (GroupNorm, SiLU, adds, casts and layout copies) were half the GPU time, GroupNorm's
statistics and their gradients the largest part (benchmarks/NOTES.md v5). This module
keeps the arithmetic minimal:

- forward: one read of x for per-channel moments (Triton), one read of x and one write of y for
  `y = silu(x * scale[n, c] + shift[n, c])` (Triton: inductor's fused version gathered the
  group statistics for every element and ran at ~2 TB/s on the decoder's activations);
- backward: one read of x and dy for two per-channel gradient sums (Triton), one read of each
  and one write of dx for `dx = A dz + B (x - center) + D` (PyTorch, fused by inductor).

Per-channel partial results are combined into group statistics with `[N, C]`-sized tensor ops.
The optional `add` ([N, C], e.g. a ResNet block's timestep embedding) is added to x before the
norm without materialising x + add, and gets its gradient from sums already taken.

The fused path runs in compiled graphs on CUDA when Triton imports (`fused_group_norm_enabled`):
in training steps, and in inference on activations of at least 128x128 pixels (the autoencoder's
large levels); LDMKIT_FUSED_GROUPNORM (read at import) changes where. Anywhere else
`group_norm_silu` is plain `silu(norm(x + add))`.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.nn.norm_channels_last import channels_last_norm_enabled, group_norm_channels_last
from ldmkit.nn.norm_silu_plan import empty_partials, pixel_splits
from ldmkit.nn.switches import TRITON_IMPORTABLE

ENV_SWITCH = "LDMKIT_FUSED_GROUPNORM"
# Where the Triton path runs in compiled CUDA graphs: "auto" (the default: training steps, and
# inference on activations of at least INFERENCE_MIN_PIXELS), "train" (training steps only),
# "all" (training and all inference), "0" (nowhere).
FUSED_MODES = ("auto", "train", "all", "0")
# Inference, measured on an H100 (benchmarks/NOTES.md v7, v8): with the kernels the compiled SD
# decoder (32 -> 256 px) ran 1.04x faster, the C1 UNet's forward (32x32 latents and below, batch
# 256) 0.96x and 0.70x, its step then waiting on the launches of the kernels' [N, C] arithmetic.
INFERENCE_MIN_PIXELS = 128 * 128


def _mode_from_environment() -> str:
    value = os.environ.get(ENV_SWITCH, "auto").strip().lower()
    value = {"1": "auto", "on": "auto", "off": "0", "": "auto"}.get(value, value)
    if value not in FUSED_MODES:
        warnings.warn(f"{ENV_SWITCH}={value!r} is not one of {', '.join(FUSED_MODES)}; using 'auto'",
                      stacklevel=2)
        return "auto"
    return value


# Read once, when ldmkit is imported: a compiled graph must not call importlib or read the
# environment while it is traced (each call would be a graph break).
FUSED_MODE = _mode_from_environment()


def fused_group_norm_enabled(x: torch.Tensor) -> bool:
    """True when `group_norm_silu(x, ...)` takes the Triton path: a CUDA tensor in a compiled
    graph, Triton installed, and LDMKIT_FUSED_GROUPNORM (read when ldmkit was imported) allowing
    it there: "auto" (default) where the graph records gradients and, in inference, for x of at
    least INFERENCE_MIN_PIXELS pixels; "train" only where it records gradients; "all" everywhere.

    Eager mode keeps PyTorch's GroupNorm: there the elementwise halves of this path would run as
    separate kernels.
    """
    if not (x.is_cuda and TRITON_IMPORTABLE and torch.compiler.is_compiling()) or FUSED_MODE == "0":
        return False
    if FUSED_MODE == "all" or torch.is_grad_enabled():
        return True
    return FUSED_MODE == "auto" and x.shape[-2] * x.shape[-1] >= INFERENCE_MIN_PIXELS


def group_norm_silu(x: torch.Tensor, norm: nn.GroupNorm, add: torch.Tensor | None = None,
                    *, fused: bool | None = None) -> torch.Tensor:
    """`silu(norm(x + add[:, :, None, None]))`.

    x: [N, C, H, W]; add: [N, C] or None. `fused=None` chooses the Triton path where it runs
    (`fused_group_norm_enabled`); True forces it (tests run its kernels in Triton's interpreter).
    """
    if fused is None:
        fused = fused_group_norm_enabled(x)
    if not fused and channels_last_norm_enabled(x):
        return group_norm_channels_last(x, norm, add, silu=True)
    if not fused or x.dim() != 4 or norm.weight is None:
        h = x if add is None else x + add[:, :, None, None]
        return F.silu(norm(h))
    return _GroupNormSiLU.apply(x, add, norm.weight, norm.bias, norm.num_groups, norm.eps)


# flexible_layout: inductor passes the tensor in whatever layout it chose (channels_last under
# layout optimisation) instead of copying it back to the traced NCHW strides; the kernels read any
# layout through its strides. The implementations import Triton on first call.
_TAGS = (torch.Tag.flexible_layout,) if hasattr(torch.Tag, "flexible_layout") else ()


@torch.library.custom_op("ldmkit::gn_channel_moments", mutates_args=(), tags=_TAGS)
def _channel_moments(x: torch.Tensor, add: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    from ldmkit.nn.norm_silu_kernels import channel_moments

    return channel_moments(x, add)


@_channel_moments.register_fake
def _(x, add):
    return empty_partials(x)


@torch.library.custom_op("ldmkit::gn_silu_grad_sums", mutates_args=(), tags=_TAGS)
def _silu_grad_sums(x: torch.Tensor, dy: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                    center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ldmkit.nn.norm_silu_kernels import silu_grad_sums

    return silu_grad_sums(x, dy, scale, shift, center)


@_silu_grad_sums.register_fake
def _(x, dy, scale, shift, center):
    return empty_partials(x)


@torch.library.custom_op("ldmkit::gn_silu_apply", mutates_args=(), tags=_TAGS)
def _silu_apply(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    from ldmkit.nn.norm_silu_kernels import silu_apply

    return silu_apply(x, scale, shift)


@_silu_apply.register_fake
def _(x, scale, shift):
    return torch.empty_like(x)  # as silu_apply allocates: x's layout when x is dense


def _per_channel(t: torch.Tensor, channels_per_group: int) -> torch.Tensor:
    # [N, G] -> [N, C]: each group's value for each of its channels.
    return t.repeat_interleave(channels_per_group, dim=1)


def _split_counts(parts: torch.Tensor, HW: int, per_split: int) -> torch.Tensor:
    # [S] float32: the pixels in each split of `parts` ([..., S]); the last split may hold fewer.
    S = parts.shape[-1]
    return (HW - per_split * torch.arange(S, device=parts.device)).clamp(max=per_split).to(torch.float32)


def _group_statistics(mean: torch.Tensor, m2: torch.Tensor, groups: int, HW: int, per_split: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Group mean and (biased) variance from per (sample, channel, split) means and M2.

    mean, m2: [N, C, S] -> mean_g, var_g: [N, G]. The pairwise combination of Chan, Golub & LeVeque
    1979 over parts of known counts: mean = sum n_i mean_i / n,  M2 = sum M2_i + sum n_i (mean_i - mean)^2.
    """
    N, C, S = mean.shape
    counts = _split_counts(mean, HW, per_split)
    mean = mean.view(N, groups, C // groups, S)
    m2 = m2.view(N, groups, C // groups, S)
    n = (C // groups) * HW
    mean_g = (mean * counts).sum(dim=(2, 3)) / n  # [N, G]
    spread = (counts * (mean - mean_g[:, :, None, None]).square()).sum(dim=(2, 3))
    return mean_g, (m2.sum(dim=(2, 3)) + spread) / n


class _GroupNormSiLU(torch.autograd.Function):
    # Wu & He 2018, eq. 1-2: xhat = (x - mu_g) / sqrt(var_g + eps), y = silu(w_c xhat + b_c),
    # written as y = silu(x scale + shift) with per (sample, channel) scale and shift.

    @staticmethod
    def forward(ctx, x, add, weight, bias, groups: int, eps: float):
        # x: [N, C, H, W], add: [N, C] or None, weight, bias: [C] -> y: [N, C, H, W] in x's dtype
        N, C, H, W = x.shape
        per_split, _ = pixel_splits(N, C, H * W)
        mean_p, m2_p = _channel_moments(x, add)  # [N, C, S] each, of x + add
        mean_g, var_g = _group_statistics(mean_p, m2_p, groups, H * W, per_split)  # [N, G]
        rstd_g = torch.rsqrt(var_g + eps)
        cpg = C // groups
        rstd, mu = _per_channel(rstd_g, cpg), _per_channel(mean_g, cpg)  # [N, C]
        scale = rstd * weight.float()
        center = mu if add is None else mu - add.float()  # x - center = (x + add) - mu
        shift = bias.float() - center * scale
        y = _silu_apply(x, scale, shift)  # silu(x scale + shift), [N, C, H, W] in x's dtype
        channel_mean = (mean_p * _split_counts(mean_p, H * W, per_split)).sum(dim=2) / (H * W)  # [N, C]
        ctx.save_for_backward(x, weight, scale, shift, center, rstd_g, channel_mean - mu)
        ctx.groups, ctx.has_add = groups, add is not None
        ctx.add_dtype = add.dtype if add is not None else None
        return y

    @staticmethod
    def backward(ctx, dy):
        # dy: [N, C, H, W] -> dx [N, C, H, W], dweight, dbias [C], dadd [N, C] (None without add)
        x, weight, scale, shift, center, rstd_g, channel_offset = ctx.saved_tensors
        N, C, H, W = x.shape
        HW, cpg, groups = H * W, C // ctx.groups, ctx.groups
        s1_p, s2_p = _silu_grad_sums(x, dy, scale, shift, center)
        s1, s2 = s1_p.sum(dim=2), s2_p.sum(dim=2)  # [N, C]: sum dz, sum dz (x + add - mu)
        rstd = _per_channel(rstd_g, cpg)
        w = weight.float()
        # Group means over the C/G * H * W elements of dxhat = w dz and of dxhat * xhat.
        m1 = (w * s1).view(N, groups, cpg).sum(dim=2) / (cpg * HW)
        m2 = (w * rstd * s2).view(N, groups, cpg).sum(dim=2) / (cpg * HW)
        # dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))  (the normalisation's backward
        # of Ioffe & Szegedy 2015, sec. 3, taken over a group) = A dz + B (x - center) + D.
        A = scale
        B = _per_channel(-(rstd_g * rstd_g) * m2, cpg)
        D = _per_channel(-rstd_g * m1, cpg)
        z = x.float() * scale[:, :, None, None] + shift[:, :, None, None]
        s = torch.sigmoid(z)
        dz = dy.float() * s * (1 + z * (1 - s))
        dx = (A[:, :, None, None] * dz + B[:, :, None, None] * (x.float() - center[:, :, None, None])
              + D[:, :, None, None]).to(x.dtype)
        d_add = None
        if ctx.has_add and ctx.needs_input_grad[1]:
            # sum over pixels of dx, from sums already taken: sum (x - center) = HW (mean_c - mu).
            d_add = (A * s1 + B * HW * channel_offset + D * HW).to(ctx.add_dtype)
        d_weight = (rstd * s2).sum(dim=0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        d_bias = s1.sum(dim=0).to(weight.dtype) if ctx.needs_input_grad[3] else None
        return dx, d_add, d_weight, d_bias, None, None
