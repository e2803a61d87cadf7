"""A convolution for few output pixels: implicit GEMM over channels_last input, split along K.

An experiment (benchmarks/small_conv_bench.py), not part of the library: on an H100 it tied
cuDNN on the SD UNet's 8x8 convolutions at batch 2 and lost elsewhere (NOTES v11).

At batch 2 the SD UNet's lowest levels have 128 (8x8) and 512 (16x16) output pixels against
1280 output channels and K = 9 x 1280 input values per pixel: a GEMM of M = 128..512 rows whose
cost should be reading its 29.5 MB weight. cuDNN runs it in 40 tiles on the H100's 132 SMs, so a
third of the chip streams the weight. Split along K, every SM takes a share of the weight; the
per-split partial sums are added afterwards (by PyTorch, where inductor would fuse the sum with
the bias and whatever follows).

The convolution is a GEMM (Chetlur et al. 2014, sec. 3.1): out[m, o] = sum_k A[m, k] W[k, o] with
m = (n, h, w) an output pixel, k = (kh, kw, c) a tap and input channel, and
A[m, k] = x[n, c, h + kh - pad, w + kw - pad] (0 outside the image). A is never built: each
K-chunk lies inside one tap, so a tile of A is a gather of BLOCK_M pixels' BLOCK_K contiguous
channels. The weight is given as `[KH * KW * C, O]` (`gemm_weight`).

Importing this module imports Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def gemm_weight(weight: torch.Tensor) -> torch.Tensor:
    """`[O, C, KH, KW]` -> `[KH * KW * C, O]`, row k = (kh, kw, c): the B operand of the GEMM."""
    o, c, kh, kw = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(kh * kw * c, o).contiguous()


@triton.jit
def _conv_splitk_kernel(x_ptr, w_ptr, out_ptr,
                        M, H, W, C, OUT_C, chunks_per_split, chunks_total,
                        stride_n, stride_h, stride_w,
                        KS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    # One program: a [BLOCK_M, BLOCK_N] tile of out, summed over K-chunks
    # [split * chunks_per_split, (split + 1) * chunks_per_split) of BLOCK_K values each.
    # Programs of the same (n-tile, split) run side by side (m fastest), so the weight tile they
    # share is read from memory once and from L2 after.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    pad = KS // 2
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < OUT_C
    img = rm // (H * W)
    oh = (rm % (H * W)) // W
    ow = rm % W
    base = x_ptr + img.to(tl.int64) * stride_n  # [BLOCK_M] pointers to each pixel's image
    chunks_per_tap = C // BLOCK_K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    first = split * chunks_per_split
    last = tl.minimum(first + chunks_per_split, chunks_total)
    for chunk in range(first, last):
        tap = chunk // chunks_per_tap
        c0 = (chunk % chunks_per_tap) * BLOCK_K
        ih = oh + tap // KS - pad
        iw = ow + tap % KS - pad
        inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_ptrs = base + ih * stride_h + iw * stride_w  # [BLOCK_M]
        a = tl.load(a_ptrs[:, None] + (c0 + rk)[None, :], mask=inside[:, None], other=0.0)
        b = tl.load(w_ptr + (chunk * BLOCK_K + rk)[:, None] * OUT_C + rn[None, :], mask=n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    out = out_ptr + split.to(tl.int64) * M * OUT_C + rm[:, None] * OUT_C + rn[None, :]
    tl.store(out, acc, mask=m_ok[:, None] & n_ok[None, :])


def conv2d_splitk_partials(x: torch.Tensor, w_gemm: torch.Tensor, kernel_size: int, split_k: int,
                           block_m: int = 128, block_n: int = 128, block_k: int = 64,
                           num_warps: int = 4, num_stages: int = 4) -> torch.Tensor:
    """Partial sums of a stride-1, 'same'-padded convolution, one per K-split.

    x: [N, C, H, W] (channels stride 1: channels_last), w_gemm: [KH * KW * C, O] (`gemm_weight`)
    -> [S, N * H * W, O] float32; their sum over S is the convolution (no bias), pixels in
    (n, h, w) order. C must be a multiple of `block_k`.
    """
    n, c, h, w = x.shape
    if x.stride(1) != 1:
        raise ValueError("conv2d_splitk_partials needs channels_last input (channel stride 1)")
    if c % block_k:
        raise ValueError(f"input channels {c} are not a multiple of block_k={block_k}")
    k_total, o = w_gemm.shape
    if k_total != kernel_size * kernel_size * c:
        raise ValueError(f"weight has {k_total} rows, expected {kernel_size}^2 x {c}")
    m = n * h * w
    chunks_total = k_total // block_k
    per_split = triton.cdiv(chunks_total, split_k)
    splits = triton.cdiv(chunks_total, per_split)
    out = torch.empty(splits, m, o, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(m, block_m), triton.cdiv(o, block_n), splits)
    _conv_splitk_kernel[grid](x, w_gemm, out, m, h, w, c, o, per_split, chunks_total,
                              x.stride(0), x.stride(2), x.stride(3),
                              KS=kernel_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                              num_warps=num_warps, num_stages=num_stages)
    return out
