"""The UNet as generation calls it: eager, or torch.compile'd with CUDA graphs.

Measured on one H100 (benchmarks/NOTES.md, E1/E2): compiled with CUDA graphs
(`mode="reduce-overhead"`), ldmkit's sampling loop runs the C1 UNet at 126 it/s against 59 it/s
compiled without graphs, and the SD-sized UNet at batch 2 at 145 it/s: the sampler's tiny
per-step kernels and the UNet's launches stop costing CPU time. Compilation itself takes tens
of seconds, so "auto" compiles only on CUDA and only for jobs of at least
`AUTO_MIN_IMAGES` images (`ldm eval`'s 10,000 samples, not `ldm generate`'s grid of ten).

On CUDA the UNet and its input are channels_last, the layout cuDNN's convolutions run in and the
one `nn/norm_channels_last.py` is written for: with it the C1 UNet's compiled forward ran 1.19x
the peer's with CUDA graphs, and the sampling loop of E1 1.16x (benchmarks/NOTES.md v9).

Weights that layers derive from their parameters (UpSample's phase kernels, the decoder's skip
convolution slices) are computed once into buffers (`nn/derived_weights.py`) rather than at every
replay; `__call__` recomputes them first where the parameters changed since. Likewise the
cross-attentions' keys and values of the context (`nn/context_kv.py`): computed when `__call__`
sees a context other than the last one, then reused by every step that passes the same tensor.

Under CUDA graphs each call's output lives in the graph's memory pool and is overwritten by
the next replay; `CompiledUNet.__call__` therefore marks a new step before every call and
returns a copy, so a sampler may keep a prediction across steps (Heun, multistep solvers).

Where this machine cannot compile (`compile_fallback`), "auto" generates uncompiled after one
warning, and so does "on" if the compiler fails at its first call (that call is run again
uncompiled, so no image is lost).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ldmkit.compile_choices import COMPILE_CHOICES
from ldmkit.compile_fallback import call_or_fallback, compile_allowed
from ldmkit.errors import UserError
from ldmkit.nn import context_kv, derived_weights

AUTO_MIN_IMAGES = 256
# Graphs dynamo may build for one function before it runs every new shape uncompiled (its default
# is 8, and only its log says so): `ldm serve` builds one per batch size, powers of two to 64 and
# doubled by guidance (eight), and a Python session may load several models of one UNet class.
RECOMPILE_LIMIT = 64


def compile_options(device: torch.device) -> dict[str, Any]:
    """torch.compile arguments for generation on `device` (tests patch this for speed)."""
    if device.type == "cuda":
        return {"mode": "reduce-overhead", "dynamic": False}
    return {"dynamic": False}


def generation_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of the compiled UNet's weights and inputs on `device`."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def wants_compile(setting: str, device: torch.device, num_images: int) -> bool:
    """Whether a job of `num_images` on `device` should use the compiled UNet."""
    if setting not in COMPILE_CHOICES:
        raise UserError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {setting!r}")
    wanted = (device.type == "cuda" and num_images >= AUTO_MIN_IMAGES) if setting == "auto" else setting == "on"
    return wanted and compile_allowed(device, "generation", "--compile off")


def refresh_job_caches(unet: nn.Module, context: torch.Tensor | None) -> None:
    """What a compiled graph cannot check before a call: that the derived weights match the
    parameters (`nn/derived_weights.py`) and the cached keys and values the context
    (`nn/context_kv.py`). Cheap when nothing changed (~0.3 ms of CPU for the SD UNet)."""
    derived_weights.refresh(unet)
    context_kv.refresh(unet, context)


class CompiledUNet:
    """A callable with the UNet's signature that runs its torch.compile'd version (built on
    first use, then reused: inductor's caches make later batches of the same shape free)."""

    def __init__(self, unet: nn.Module, device: torch.device) -> None:
        self.options = compile_options(device)
        self.graphs = self.options.get("mode") == "reduce-overhead"
        self.memory_format = generation_memory_format(device)
        unet.to(memory_format=self.memory_format)  # the convolutions' weights; values unchanged
        derived_weights.attach(unet)
        self.unet = unet
        import torch._dynamo  # what torch.compile imports anyway

        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)  # raised, never lowered
        self.compiled = torch.compile(unet, **self.options)
        self.fallback: dict[str, str] = {}  # "failed": why, once the compiler failed (then eager for good)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        refresh_job_caches(self.unet, kwargs.get("context"))
        x = x.contiguous(memory_format=self.memory_format)  # [B, C, H, W]
        return call_or_fallback(self.fallback, self._compiled_call, self.unet, (x, t), kwargs,
                                what="generation", flag="--compile off")

    def _compiled_call(self, x: torch.Tensor, t: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        if not self.graphs:
            return self.compiled(x, t, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x, t, **kwargs).clone()  # out of the pool the next replay reuses
