"""Triton kernels of GroupNorm + SiLU: the two reductions, per-channel moments (forward) and
per-channel gradient sums (backward), and the forward's elementwise `silu(x scale + shift)`.

Both read an activation `[N, C, H, W]` through its strides, so one kernel serves NCHW and
channels_last alike: inductor's layout optimisation hands the training step's convolutions
channels_last tensors, and a GroupNorm that reads them as NCHW would read 2-byte pieces
C elements apart. A program owns `BLOCK_C` channels of one sample and a run of pixels; the tile is
laid out along whichever axis is contiguous in memory (`_tile`).

The reductions return partial results per (sample, channel, pixel split); `norm_silu.py`
combines them (the combination is a few `[N, C]`-sized tensor ops) and does the backward's
elementwise part in PyTorch, where inductor fuses it with its neighbours.

Importing this module imports Triton; `norm_silu.py` imports it only when a kernel runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ldmkit.nn.norm_silu_plan import SPLIT_UNIT, empty_partials, pixel_splits


@triton.jit
def _pixel_offsets(hw, W, stride_h, stride_w):
    # Memory offsets of flat pixel indices hw = h W + w, for any (stride_h, stride_w): NCHW,
    # channels_last and strided views alike, so no input is copied into another layout first.
    return (hw // W) * stride_h + (hw % W) * stride_w


@triton.jit
def _load_tile(rows, c_ok, start, hw_end, W, stride_h, stride_w, BLOCK_HW: tl.constexpr):
    # The [BLOCK_C, BLOCK_HW] tile of pixels start.. (up to hw_end) of the channels whose pixel 0
    # `rows` points at, in float32 (0 outside), and its mask.
    hw = start + tl.arange(0, BLOCK_HW)
    ok = c_ok[:, None] & (hw < hw_end)[None, :]
    v = tl.load(rows[:, None] + _pixel_offsets(hw, W, stride_h, stride_w)[None, :], mask=ok, other=0.0)
    return v.to(tl.float32), ok


@triton.jit
def _moments_kernel(x_ptr, add_ptr, mean_ptr, m2_ptr,
                    C, W, HW, hw_per_split, n_splits,
                    stride_n, stride_c, stride_h, stride_w,
                    HAS_ADD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # Mean and centred sum of squares (M2) of x (+ add[n, c]) over one split of the pixels, per
    # channel, by the shifted-data method (Chan, Golub & LeVeque 1983, sec. 3): with K the split's
    # first value of the channel and d = x - K,  mean = K + sum d / n,  M2 = sum d^2 - (sum d)^2 / n.
    # K is a sample of the channel, so sum d is small against n spread and a large mean does not
    # cancel the variance, while the loop keeps plain per-lane accumulators (one reduction at the
    # end). `add` is constant over a channel's pixels: it cancels from d and shifts only the mean.
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    c_ok = c < C
    hw_begin = split * hw_per_split
    hw_end = tl.minimum(hw_begin + hw_per_split, HW)
    rows = x_ptr + n * stride_n + c * stride_c  # [BLOCK_C] pointers to each channel's pixel 0
    k = tl.load(rows + _pixel_offsets(hw_begin, W, stride_h, stride_w), mask=c_ok, other=0.0).to(tl.float32)
    acc1 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for start in range(hw_begin, hw_end, BLOCK_HW):
        v, ok = _load_tile(rows, c_ok, start, hw_end, W, stride_h, stride_w, BLOCK_HW)
        d = tl.where(ok, v - k[:, None], 0.0)
        acc1 += d
        acc2 += d * d
    s1 = tl.sum(acc1, axis=1)
    s2 = tl.sum(acc2, axis=1)
    count = (hw_end - hw_begin).to(tl.float32)
    mean = k + s1 / count
    if HAS_ADD:
        mean += tl.load(add_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
    m2 = tl.maximum(s2 - s1 * (s1 / count), 0.0)
    out = (n * C + c) * n_splits + split
    tl.store(mean_ptr + out, mean, mask=c_ok)
    tl.store(m2_ptr + out, m2, mask=c_ok)


@triton.jit
def _grad_sums_kernel(x_ptr, dy_ptr, scale_ptr, shift_ptr, center_ptr, s1_ptr, s2_ptr,
                      C, W, HW, hw_per_split, n_splits,
                      stride_n, stride_c, stride_h, stride_w,
                      dstride_n, dstride_c, dstride_h, dstride_w,
                      BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # With z = x scale[n,c] + shift[n,c] (the normalised, affine input of SiLU) and
    # dz = dy silu'(z), silu'(z) = s (1 + z (1 - s)), s = sigmoid(z):
    # S1 = sum dz and S2 = sum dz (x - center[n,c]) over one split of the pixels, per channel.
    # `center` is the group mean minus the `add` input, so S2 is taken about the mean of x + add
    # (no cancellation) and sum dz xhat = rstd S2.
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    c_ok = c < C
    a = tl.load(scale_ptr + n * C + c, mask=c_ok, other=0.0)
    b = tl.load(shift_ptr + n * C + c, mask=c_ok, other=0.0)
    mu = tl.load(center_ptr + n * C + c, mask=c_ok, other=0.0)
    hw_begin = split * hw_per_split
    hw_end = tl.minimum(hw_begin + hw_per_split, HW)
    x_rows = x_ptr + n * stride_n + c * stride_c
    dy_rows = dy_ptr + n * dstride_n + c * dstride_c
    s1 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for start in range(hw_begin, hw_end, BLOCK_HW):
        x, ok = _load_tile(x_rows, c_ok, start, hw_end, W, stride_h, stride_w, BLOCK_HW)
        dy, _ = _load_tile(dy_rows, c_ok, start, hw_end, W, dstride_h, dstride_w, BLOCK_HW)
        z = x * a[:, None] + b[:, None]
        s = tl.sigmoid(z)
        dz = tl.where(ok, dy * s * (1.0 + z * (1.0 - s)), 0.0)
        s1 += dz
        s2 += dz * (x - mu[:, None])
    out = (n * C + c) * n_splits + split
    tl.store(s1_ptr + out, tl.sum(s1, axis=1), mask=c_ok)
    tl.store(s2_ptr + out, tl.sum(s2, axis=1), mask=c_ok)


@triton.jit
def _apply_kernel(x_ptr, scale_ptr, shift_ptr, y_ptr, C, W, HW,
                  stride_n, stride_c, stride_h, stride_w,
                  ystride_n, ystride_c, ystride_h, ystride_w,
                  FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    # y = silu(x scale[n, c] + shift[n, c]) on one [BLOCK_C, BLOCK_HW] tile, written in y's layout.
    # Each program loads its channels' scale and shift once: one read of x and one write of y
    # per element (inductor's version gathered the group statistics for every element).
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_ok = c < C
    ok = c_ok[:, None] & (hw < HW)[None, :]
    a = tl.load(scale_ptr + n * C + c, mask=c_ok, other=0.0)
    b = tl.load(shift_ptr + n * C + c, mask=c_ok, other=0.0)
    if FLAT:  # x and y dense (NCHW or channels_last): a pixel's offset is hw * stride_w
        x_off = hw * stride_w
        y_off = hw * ystride_w
    else:
        x_off = _pixel_offsets(hw, W, stride_h, stride_w)
        y_off = _pixel_offsets(hw, W, ystride_h, ystride_w)
    x = tl.load(x_ptr + n * stride_n + c[:, None] * stride_c + x_off[None, :], mask=ok, other=0.0)
    z = x.to(tl.float32) * a[:, None] + b[:, None]
    y = z * tl.sigmoid(z)
    tl.store(y_ptr + n * ystride_n + c[:, None] * ystride_c + y_off[None, :], y.to(y_ptr.dtype.element_ty),
             mask=ok)


def _tile(channels_contiguous: bool, C: int, HW: int) -> tuple[int, int]:
    # 2,048-element tiles, long along the axis that is contiguous in memory: 64 channels
    # (128 bytes of bf16) per pixel for channels_last, 128 pixels per channel for NCHW.
    if channels_contiguous:
        block_c = min(64, triton.next_power_of_2(C))
        return block_c, 2048 // block_c
    block_hw = min(SPLIT_UNIT, triton.next_power_of_2(HW))
    return 2048 // block_hw, block_hw


def _launch_plan(x: torch.Tensor) -> tuple[tuple[int, int, int], dict[str, int], int, int]:
    """(grid, tile sizes, pixels per split, splits) for a kernel reading x: [N, C, H, W]."""
    N, C, H, W = x.shape
    block_c, block_hw = _tile(x.stride(1) == 1 and C > 1, C, H * W)
    per_split, n_splits = pixel_splits(N, C, H * W)
    grid = (N, triton.cdiv(C, block_c), n_splits)
    return grid, dict(BLOCK_C=block_c, BLOCK_HW=block_hw), per_split, n_splits


def channel_moments(x: torch.Tensor, add: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (sample, channel, pixel split) mean and M2 of x (+ add[:, :, None, None]).

    x: [N, C, H, W] in any layout; add: [N, C] or None.
    Returns mean, m2: [N, C, S] float32; `pixel_splits` gives the pixels per split (the last
    split may hold fewer).
    """
    N, C, H, W = x.shape
    grid, tiles, per_split, n_splits = _launch_plan(x)
    mean, m2 = empty_partials(x)
    add_arg = add.contiguous() if add is not None else mean  # never read without HAS_ADD
    _moments_kernel[grid](x, add_arg, mean, m2, C, W, H * W, per_split, n_splits, *x.stride(),
                          HAS_ADD=add is not None, **tiles)
    return mean, m2


def silu_grad_sums(x: torch.Tensor, dy: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (sample, channel, pixel split) sums of dz and dz (x - center), where
    dz = dy * silu'(x scale + shift).

    x, dy: [N, C, H, W] in any layouts (they may differ); scale, shift, center: [N, C]
    float32. Returns s1, s2: [N, C, S] float32 (summed over S by the caller).
    """
    N, C, H, W = x.shape
    grid, tiles, per_split, n_splits = _launch_plan(x)
    s1, s2 = empty_partials(x)
    _grad_sums_kernel[grid](x, dy, scale.contiguous(), shift.contiguous(), center.contiguous(), s1, s2,
                            C, W, H * W, per_split, n_splits, *x.stride(), *dy.stride(), **tiles)
    return s1, s2


def _flat_pixels(t: torch.Tensor) -> bool:
    # Pixel hw of every channel at hw * stride_w: rows follow each other (dense NCHW or channels_last).
    return t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3)


def silu_apply(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`silu(x * scale[:, :, None, None] + shift[:, :, None, None])` in x's dtype and (for a dense
    x) layout. x: [N, C, H, W]; scale, shift: [N, C] float32."""
    N, C, H, W = x.shape
    y = torch.empty_like(x)  # x's strides when x is dense, else contiguous (the fake does the same)
    # 4,096-element tiles, long along the axis contiguous in memory (as _tile, twice the size:
    # this kernel streams, one tile per program).
    if x.stride(1) == 1 and C > 1:
        block_c = min(64, triton.next_power_of_2(C))
        block_hw = 4096 // block_c
    else:
        block_hw = min(1024, triton.next_power_of_2(H * W))
        block_c = 4096 // block_hw
    grid = (N, triton.cdiv(C, block_c), triton.cdiv(H * W, block_hw))
    _apply_kernel[grid](x, scale.contiguous(), shift.contiguous(), y, C, W, H * W, *x.stride(), *y.stride(),
                        FLAT=_flat_pixels(x) and _flat_pixels(y), BLOCK_C=block_c, BLOCK_HW=block_hw)
    return y
