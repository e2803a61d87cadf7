"""GEGLU, `value * gelu(gate)` for a projection output `h = [value, gate]` (Shazeer 2020, eq. 6),
with its backward as one Triton kernel on CUDA.

Inductor writes the backward's `cat([d value, d gate])` as one kernel over the joined output, in
which each element recomputes what its half needs: the gate and the incoming gradient are read
twice. In the SD UNet's training step these kernels took 10.4 ms of 221 (benchmarks/NOTES.md
v12), at 1.2 ms for 1.7 GB at 64x64 and batch 32. The kernel (`geglu_kernels.geglu_backward`)
reads h and the gradient once and writes both halves of dh (0.6 ms there).

The forward stays in PyTorch, where inductor fuses it (it runs at the memory bandwidth). The
kernel runs in CUDA training (eager or compiled) when Triton imports, unless LDMKIT_GEGLU_KERNEL=0
(read at import); anywhere else `geglu` is the plain formula and autograd's backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldmkit.nn.switches import TRITON_IMPORTABLE, switch_on

ENV_SWITCH = "LDMKIT_GEGLU_KERNEL"
ENABLED = switch_on(ENV_SWITCH)


def geglu_kernel_enabled(h: torch.Tensor) -> bool:
    """True where `geglu(h)` takes its backward from the Triton kernel: a CUDA tensor that
    records gradients, Triton installed, LDMKIT_GEGLU_KERNEL not 0."""
    return ENABLED and TRITON_IMPORTABLE and h.is_cuda and torch.is_grad_enabled() and h.requires_grad


def geglu(h: torch.Tensor, *, kernel: bool | None = None) -> torch.Tensor:
    """`value * gelu(gate)` with `value, gate = h.chunk(2, -1)`.

    h: [..., 2D] -> [..., D]. `kernel=None` uses the Triton backward where it runs
    (`geglu_kernel_enabled`); True forces it (tests run it in Triton's interpreter).
    """
    if kernel is None:
        kernel = geglu_kernel_enabled(h)
    if kernel and h.shape[-1] % 2 == 0:
        return _GEGLU.apply(h)
    value, gate = h.chunk(2, dim=-1)
    return value * F.gelu(gate)


@torch.library.custom_op("ldmkit::geglu_backward", mutates_args=())
def _geglu_backward(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    from ldmkit.nn.geglu_kernels import geglu_backward

    return geglu_backward(h, g)


@_geglu_backward.register_fake
def _(h, g):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


class _GEGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        # h: [..., 2D] -> y: [..., D]
        value, gate = h.chunk(2, dim=-1)
        ctx.save_for_backward(h)
        return value * F.gelu(gate)

    @staticmethod
    def backward(ctx, g):
        (h,) = ctx.saved_tensors
        return _geglu_backward(h, g)  # [..., 2D] in h's dtype; the kernel reads g in its own
