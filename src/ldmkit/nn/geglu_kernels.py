"""Triton kernel of GEGLU's backward: the gradient of `value * gelu(gate)` with respect to the
projection output `h = [value, gate]`, each input read once.

Importing this module imports Triton; `geglu.py` imports it only when the kernel runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_SQRT_HALF = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi); constexpr: globals a kernel reads


@triton.jit
def _geglu_backward_kernel(h_ptr, g_ptr, dh_ptr, M, D,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # A [BLOCK_M, BLOCK_D] tile of rows of h = [value | gate] ([M, 2D]) and of g ([M, D]).
    # y = v gelu(a), gelu(a) = a Phi(a) (Hendrycks & Gimpel 2016, exact form):
    #   dy/dv = gelu(a),  dy/da = v (Phi(a) + a phi(a)),  Phi the normal CDF, phi its density.
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = (rows < M)[:, None] & (cols < D)[None, :]
    in_h = rows[:, None] * (2 * D) + cols[None, :]  # the value's offsets; the gate's are + D
    in_g = rows[:, None] * D + cols[None, :]
    v = tl.load(h_ptr + in_h, mask=ok, other=0.0).to(tl.float32)
    a = tl.load(h_ptr + in_h + D, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + in_g, mask=ok, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(a * _SQRT_HALF))
    pdf = tl.exp(-0.5 * a * a) * _INV_SQRT_2PI
    out_ty = dh_ptr.dtype.element_ty
    tl.store(dh_ptr + in_h, (g * a * cdf).to(out_ty), mask=ok)
    tl.store(dh_ptr + in_h + D, (g * v * (cdf + a * pdf)).to(out_ty), mask=ok)


def geglu_backward(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """d(value * gelu(gate))/dh contracted with g, in h's dtype and shape.

    h: [..., 2D] (value, then gate), g: [..., D] -> dh: [..., 2D]."""
    h, g = h.contiguous(), g.contiguous()
    D = g.shape[-1]
    M = g.numel() // D if D else 0
    dh = torch.empty_like(h)
    if M == 0:
        return dh
    # 4,096-element tiles along the contiguous axis: the kernel streams, one tile per program
    block_d = min(256, triton.next_power_of_2(D))
    block_m = 4096 // block_d
    grid = (triton.cdiv(M, block_m), triton.cdiv(D, block_d))
    _geglu_backward_kernel[grid](h, g, dh, M, D, BLOCK_M=block_m, BLOCK_D=block_d)
    return dh
