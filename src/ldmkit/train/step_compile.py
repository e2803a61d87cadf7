"""torch.compile for the training stages, and the start of a step that CUDA graphs need.

Both stages compile their forward the same way: on CUDA only, before DDP wraps it (as nanoGPT
does), in `RunConfig.compile_mode`. CUDA graphs ("reduce-overhead") replay the forward and the
backward as one launch each, which is what small models need (their steps are launch-bound,
benchmarks/NOTES.md); DDP's hooks, and anything else a stage marks as not graph-safe, get the
plain mode.

Training compiles with inductor's layout optimisation forced on: the graph then keeps its
convolutions' activations in channels_last, where by its own heuristics (which skip small
channel counts) it leaves them NCHW and cuDNN transposes around every convolution to run its
NHWC kernels (22% of the GPU time of the fashion-mnist UNet's step). Measured on one H100
(benchmarks/NOTES.md, v3): 1.10x on the fashion-mnist and emoji UNet steps, 1.08x and 1.33x on
their VAE steps. Making the modules channels_last instead was slower (0.92x).
"""
from __future__ import annotations

import torch
import torch._inductor.config as inductor_config
from torch import nn

from ldmkit.train.config import RunConfig
from ldmkit.train.distributed import DistInfo


def compile_for_training(module: nn.Module, run: RunConfig, dist: DistInfo, *,
                         graphs_allowed: bool = True) -> tuple[nn.Module, bool]:
    """(`module` compiled per the run, whether it replays CUDA graphs); unchanged off CUDA."""
    if not run.compile or dist.device.type != "cuda":
        return module, False
    plain = dist.distributed or not graphs_allowed
    mode = "default" if plain else run.compile_mode
    if hasattr(inductor_config, "force_layout_optimization"):  # a private switch: absent in other versions
        inductor_config.force_layout_optimization = True
    return torch.compile(module, mode=mode), mode == "reduce-overhead"


def begin_step(optimizer: torch.optim.Optimizer, graphs: bool) -> None:
    """Release the last step's gradients before this step's forward, and under CUDA graphs mark
    a new step: those gradients live in the graph's memory pool, which the next replay reuses."""
    optimizer.zero_grad(set_to_none=True)
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()
