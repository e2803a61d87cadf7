"""Multi-head attention in compiled CUDA training as one opaque operator pair around cuDNN's
fused attention, so that inductor never sees the `[B, heads, N, d]` views.

Why: inductor's layout optimisation (forced on by `ldm train`, chosen by its heuristics for the
peer) gives every dense 4-D tensor between two convolutions channels_last strides when it stores
one. The per-head views of q, k, v and of the attention output are such tensors: in the SD
UNet's training step the forward copied each of them into that layout to save it for the
backward, and the backward copied each back for cuDNN, ~9 ms of a 221 ms step
(benchmarks/NOTES.md v12). Here the operators take and return `[B, N, heads * d]` tensors, the
layout the projections produce; the per-head views exist only inside them.

The pair is `aten._scaled_dot_product_cudnn_attention` and its backward, the kernels PyTorch's
SDPA already runs on this hardware (NOTES v5), so the function and its rounding are SDPA's;
where cuDNN refuses a shape at run time, a reference in PyTorch takes over (both directions
work from the same output and log-sum-exp). It runs where `attention_op_enabled` says
(compiled, recording gradients, Hopper or newer, bf16/fp16, head size a multiple of 8 up to
128), unless LDMKIT_ATTENTION_OP=0 (read at import).
"""

from __future__ import annotations

import functools
import math

import torch

from ldmkit.nn.switches import switch_on

ENV_SWITCH = "LDMKIT_ATTENTION_OP"
ENABLED = switch_on(ENV_SWITCH)
MAX_HEAD_DIM = 128


def _cudnn_attention_device() -> bool:
    return _cudnn_attention_device_cached(torch.cuda.current_device())


# What `torch.compiler.assume_constant_result` does (dynamo calls the function while tracing and
# keeps its result as a constant), without importing torch._dynamo when ldmkit is imported: that
# import took ~1 s of every `ldm` command's start. tests/test_import_time.py checks that the
# decorator still sets nothing more.
_cudnn_attention_device._dynamo_marked_constant = True  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=None)
def _cudnn_attention_device_cached(index: int) -> bool:
    # cuDNN's fused attention is SDPA's first choice from Hopper on (compute capability 9.x)
    return (torch.backends.cudnn.is_available() and torch.backends.cuda.cudnn_sdp_enabled()
            and torch.cuda.get_device_capability(index)[0] >= 9)


def attention_op_enabled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> bool:
    """True where `multi_head_attention` runs through `attention(q, k, v, heads)`."""
    if not (ENABLED and q.is_cuda and torch.compiler.is_compiling() and torch.is_grad_enabled()):
        return False
    if not (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    d = q.shape[-1] // heads
    same_dtype = q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16)
    dense = all(t.dim() == 3 and t.is_contiguous() for t in (q, k, v))
    return same_dtype and dense and d % 8 == 0 and d <= MAX_HEAD_DIM and _cudnn_attention_device()


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    # [B, N, heads*d] -> [B, heads, N, d] (a view)
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2)


def _joined(t: torch.Tensor) -> torch.Tensor:
    # [B, heads, N, d] -> [B, N, heads*d]
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d).contiguous()


def _cudnn_forward(q4, k4, v4):
    out, lse, _, _, _, _, seed, offset, _ = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q4, k4, v4, None, True)
    return out, lse, seed, offset


def _cudnn_backward(g4, q4, k4, v4, out4, lse, seed, offset):
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        g4, q4, k4, v4, out4, lse, seed, offset, None, None, None, q4.shape[2], k4.shape[2], 0.0, False)


def reference_forward(q4, k4, v4):
    """out = softmax(S) v and the rows' log-sum-exp (float32, [B, H, N, 1]) of S = q k^T / sqrt(d),
    with the whole of S in memory: where cuDNN's kernels refuse a shape, and in the CPU tests."""
    acc = torch.promote_types(q4.dtype, torch.float32)
    s = q4.to(acc) @ k4.to(acc).transpose(-1, -2) / math.sqrt(q4.shape[-1])  # [B, H, N, M]
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    out = (torch.exp(s - lse) @ v4.to(acc)).to(q4.dtype)
    empty = torch.zeros((), dtype=torch.int64, device=q4.device)
    return out, lse.float(), empty, empty.clone()


def reference_backward(g4, q4, k4, v4, out4, lse, seed, offset):
    """The gradients of q, k, v from the forward's output and log-sum-exp (Dao 2023, FlashAttention-2, alg. 2:
    P = exp(S - lse), dV = P^T dO, dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D))."""
    acc = torch.promote_types(q4.dtype, torch.float32)
    q, k, v, g = (t.to(acc) for t in (q4, k4, v4, g4))
    scale = 1 / math.sqrt(q4.shape[-1])
    p = torch.exp(q @ k.transpose(-1, -2) * scale - lse.to(acc))  # [B, H, N, M]
    dv = p.transpose(-1, -2) @ g
    ds = p * (g @ v.transpose(-1, -2) - (g * out4.to(acc)).sum(dim=-1, keepdim=True))
    return (ds @ k * scale).to(q4.dtype), (ds.transpose(-1, -2) @ q * scale).to(k4.dtype), dv.to(v4.dtype)


def _backend_forward(q4, k4, v4):
    try:
        return _cudnn_forward(q4, k4, v4)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:  # a shape cuDNN has no plan for: the backward takes either log-sum-exp
        return reference_forward(q4, k4, v4)


def _backend_backward(*args):
    try:
        return _cudnn_backward(*args)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:
        return reference_backward(*args)


@torch.library.custom_op("ldmkit::attention_forward", mutates_args=())
def _attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # q: [B, N, heads*d], k, v: [B, M, heads*d] -> out [B, N, heads*d], logsumexp [B, heads, N, 1]
    # (float32), and the (unused, no dropout) random seed and offset the backward takes
    out, lse, seed, offset = _backend_forward(*(_per_head(t.contiguous(), heads) for t in (q, k, v)))
    return _joined(out), lse.contiguous(), seed.clone(), offset.clone()


@_attention_forward.register_fake
def _(q, k, v, heads):
    b, n, _ = q.shape
    lse = q.new_empty((b, heads, n, 1), dtype=torch.float32)
    seed = q.new_empty((), dtype=torch.int64)
    return torch.empty_like(q), lse, seed, torch.empty_like(seed)


@torch.library.custom_op("ldmkit::attention_backward", mutates_args=())
def _attention_backward(g: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        out: torch.Tensor, lse: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor,
                        heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # the gradients of q, k, v, each in its input's shape [B, N or M, heads*d]
    views = [_per_head(t.contiguous(), heads) for t in (g, q, k, v, out)]
    dq, dk, dv = _backend_backward(*views, lse, seed, offset)
    return _joined(dq), _joined(dk), _joined(dv)


@_attention_backward.register_fake
def _(g, q, k, v, out, lse, seed, offset, heads):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, heads: int):
        # q: [B, N, heads*d], k, v: [B, M, heads*d] -> [B, N, heads*d]
        out, lse, seed, offset = _attention_forward(q, k, v, heads)
        ctx.save_for_backward(q, k, v, out, lse, seed, offset)
        ctx.heads = heads
        return out

    @staticmethod
    def backward(ctx, g):
        # g: [B, N, heads*d] -> dq [B, N, heads*d], dk, dv [B, M, heads*d]
        q, k, v, out, lse, seed, offset = ctx.saved_tensors
        dq, dk, dv = _attention_backward(g, q, k, v, out, lse, seed, offset, ctx.heads)
        return dq, dk, dv, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017, eq. 1) through the operator pair.

    q: [B, N, heads*d], k and v: [B, M, heads*d] -> [B, N, heads*d]."""
    return _Attention.apply(q, k, v, heads)
