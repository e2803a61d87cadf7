"""torch.compile for the training stages, and the start of a step that CUDA graphs need.

Both stages compile their forward the same way: on CUDA only, in `RunConfig.compile_mode`. CUDA
graphs ("reduce-overhead") replay the forward and the backward as one launch each, which is what
small models need (their steps are launch-bound, benchmarks/NOTES.md); what a stage marks as not
graph-safe (a VAE stage with a discriminator, throughout; a model inside a whole-step graph, which
holds its own) gets the plain mode. Under torchrun the same: the ranks' gradients are averaged
after the backward (grad_sync.py), outside the compiled module.

Training compiles with inductor's layout optimisation forced on: the graph then keeps its
convolutions' activations in channels_last, where by its own heuristics (which skip small
channel counts) it leaves them NCHW and cuDNN transposes around every convolution to run its
NHWC kernels (22% of the GPU time of the fashion-mnist UNet's step). Measured on one H100
(benchmarks/NOTES.md, v3): 1.10x on the fashion-mnist and emoji UNet steps, 1.08x and 1.33x on
their VAE steps. Making the modules and their inputs channels_last instead was slower (0.92x;
v5: 0.95x on the C1 step).

The graph then also produces the convolutions' weight gradients in channels_last. Autograd keeps
a gradient in its parameter's layout (the "gradient layout contract"), so with NCHW weights each
of those gradients was copied once more, outside the graph, every step (1.5 ms of the C1 step's
46, benchmarks/NOTES.md v7). `weights_for_training` stores the weights channels_last where the
step is compiled; the inputs stay NCHW and inductor lays out the activations. Measured on the C1
UNet step (1.028x); the VAE stage takes it on the same reasoning, unmeasured.

Where this machine cannot compile (`compile_fallback`: no Triton, a GPU older than Triton
supports, a compiler failing on the first step), the stages train uncompiled after one warning.
"""
from __future__ import annotations

import torch
from torch import nn

from ldmkit.compile_fallback import EagerFallback, compile_allowed
from ldmkit.train.config import RunConfig
from ldmkit.train.distributed import DistInfo


def compile_for_training(module: nn.Module, run: RunConfig, dist: DistInfo, *,
                         graphs_allowed: bool = True) -> tuple[nn.Module, bool]:
    """(`module` compiled per the run, whether it replays CUDA graphs); unchanged off CUDA.

    The compiled form falls back to `module` itself if compiling fails on the first step."""
    if not compiles_for_training(run, dist):
        return module, False
    import torch._inductor.config as inductor_config  # here: importing it takes ~1 s, and compiling needs it anyway

    mode = run.compile_mode if graphs_allowed else "default"
    if hasattr(inductor_config, "force_layout_optimization"):  # a private switch: absent in other versions
        inductor_config.force_layout_optimization = True
    compiled = EagerFallback(torch.compile(module, mode=mode), module, what="training", flag="--no-compile")
    return compiled, mode == "reduce-overhead"


def compiles_for_training(run: RunConfig, dist: DistInfo) -> bool:
    """Whether `compile_for_training` compiles: CUDA with `run.compile`, where this machine can
    (`compile_fallback.compile_allowed`; the first refusal warns)."""
    return run.compile and dist.device.type == "cuda" and compile_allowed(dist.device, "training", "--no-compile")


def weights_for_training(module: nn.Module, run: RunConfig, dist: DistInfo) -> nn.Module:
    """`module` with its convolution weights channels_last where its step is compiled (see the
    module docstring); unchanged elsewhere. Call it before the EMA copy and the optimizer are made,
    so their tensors share the layout (`optimizer_state_like_params` for loaded states).

    Values are unchanged: state dicts keep the strides they have, loading copies values into the
    existing parameters, and inference files are written contiguous.
    """
    if not compiles_for_training(run, dist):
        return module
    return module.to(memory_format=torch.channels_last)


def optimizer_state_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded per-parameter state tensor its parameter's strides.

    A fused AdamW walks a parameter and its moments as flat memory, so they must share a layout;
    `Optimizer.load_state_dict` keeps the strides the tensors were saved with, which differ when
    a run trained on the CPU (NCHW weights) resumes on a GPU (channels_last weights).
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
