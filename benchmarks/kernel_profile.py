"""Where a benchmark's GPU time goes: kernels by kind from torch.profiler, and the synchronizing
CUDA calls of a loop. Used by `bench_gpu.py --profile` and the generation runs.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from harness import synchronize


# ldmkit's own Triton kernels (src/ldmkit/nn/norm_silu_kernels.py), named as the profiler shows them.
LDMKIT_TRITON_KERNELS = ("_moments_kernel", "_grad_sums_kernel", "_apply_kernel")
LDMKIT_GEGLU_KERNELS = ("_geglu_backward_kernel",)  # src/ldmkit/nn/geglu_kernels.py


def kernel_category(name: str) -> str:
    """A CUDA kernel's kind, from its name (cuDNN, cuBLAS, inductor and PyTorch naming)."""
    n = name.lower()
    if n.startswith("triton_"):
        return "triton (norms, pointwise, layout)"
    if n in LDMKIT_TRITON_KERNELS:
        return "triton (ldmkit GroupNorm kernels)"
    if n in LDMKIT_GEGLU_KERNELS:
        return "triton (ldmkit GEGLU kernel)"
    if "sdpa" in n or "fmha" in n or "flash" in n or "attention" in n:
        return "attention"
    if any(k in n for k in ("fprop", "dgrad", "wgrad", "conv", "implicit_gemm")):
        return "convolution"
    if "gemm" in n or "nvjet" in n or "cutlass" in n or "cublas" in n:
        return "matmul"
    if "multi_tensor" in n or "adam" in n:
        return "optimizer"
    if "memset" in n or "memcpy" in n or "copy" in n:
        return "copies"
    return "other"


def kernel_name_tail(name: str, head: int = 90, tail: int = 160) -> dict[str, str]:
    """{"name_tail": the end of a kernel name cut at `head` characters}: PyTorch's elementwise
    kernels differ only after their first 90 characters (the functor: a copy, a fill, an add)."""
    return {"name_tail": name[-tail:]} if len(name) > head else {}


def profile_kernels(fn: Callable[[], Any], device: torch.device, *, iters: int = 3,
                top: int = 12) -> dict[str, Any]:
    """Where the time goes, to choose the next lever: the `top` kernels (CPU ops without a GPU) by total
    device time over `iters` calls of `fn`, and the GPU time per call by kernel kind, from
    torch.profiler (CUDA activity only on the GPU: CPU op tracing of a compiled step is slow)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        synchronize(device)
    rows = []
    for evt in prof.key_averages():
        t = (getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)) if cuda \
            else evt.self_cpu_time_total
        if t:  # the kind from the whole name: a cut one can lose the functor (e.g. a copy)
            rows.append({"name": evt.key[:90], **kernel_name_tail(evt.key), "kind": kernel_category(evt.key),
                         "calls": evt.count // iters, "ms_per_iter": t / 1e3 / iters})
    rows.sort(key=lambda r: -r["ms_per_iter"])
    total = sum(r["ms_per_iter"] for r in rows) or 1.0
    categories: dict[str, float] = {}
    for r in rows:
        r["share"] = r["ms_per_iter"] / total
        categories[r["kind"]] = categories.get(r["kind"], 0.0) + r["ms_per_iter"]
    return {"profile_top": rows[:top], "profile_gpu_ms": total,
            "profile_categories": dict(sorted(categories.items(), key=lambda kv: -kv[1]))}


def count_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """How many synchronizing CUDA calls `fn` makes (torch.cuda.set_sync_debug_mode)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught)
