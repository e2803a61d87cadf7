"""Weights that layers compute from their parameters, computed once for a generation job.

Two layers build a weight from their parameters at every call: `UpSample` its phase or
transposed kernel (nn/upsample_conv.py), and a UNet decoder's `ResNetBlock` the two input-channel
slices of its skip convolution (nn/resnet.py), which cuDNN copies into contiguous memory first.
A compiled graph recomputes them at every replay, so a 25-step sampler recomputed them 25 times
with the same parameters: in the SD UNet at batch 2 (E2) these were ~30 of ~630 kernels a step,
~0.23 ms of ~7 (benchmarks/NOTES.md v10).

`attach(model)` computes them into non-persistent buffers of the layers (never saved in a state
dict; parameters-like static addresses under CUDA graphs). A layer takes its cached weight through
`derived(layer, name)`, which gives it only while gradients are off, and, outside torch.compile,
only while the layer's parameters are still the ones it was computed from (their version counters
and storage). Inside a compiled graph that check cannot run (a version counter is data to the
tracer, a graph break), so code that compiles a model with these attached calls `refresh(model)`
before each call: `CompiledUNet` does. `detach(model)` removes them.

The memory: `UpSample` keeps both of its forms (which one runs depends on the input size, known
only at the call), 2 x 16/9 of its 3x3 weights: for the SD 1.x UNet 0.24 GB in bf16 beside
its 1.7 GB of parameters (with the skip slices: 0.28 GB).

A layer takes part by defining `derived_weights() -> dict[str, Tensor]` (computed from its current
parameters; empty when it has none to cache) and `derived_sources() -> list[Tensor]` (the
parameters they come from).
"""

from __future__ import annotations

import torch
from torch import nn

PREFIX = "_derived_"


def _stamp(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Where and at which version the parameters behind a layer's derived weights are."""
    return tuple((t.data_ptr(), t._version) for t in module.derived_sources())


def _participants(model: nn.Module):
    return (m for m in model.modules() if callable(getattr(m, "derived_weights", None)))


def _attached(model: nn.Module) -> list[nn.Module]:
    # The layers `attach(model)` gave buffers, listed on the model: walking the SD UNet's 643
    # modules with getattr (a missing attribute is an exception in nn.Module) took 6 ms of CPU at
    # every call, beside a sampler step of 6.5 ms on the GPU.
    return model.__dict__.get("_derived_layers", [])


def attach(model: nn.Module) -> int:
    """Compute every layer's derived weights into buffers; returns how many layers have them."""
    layers = []
    for module in _participants(model):
        with torch.no_grad():
            weights = module.derived_weights()
        if not weights:
            continue
        for name, tensor in weights.items():
            module.register_buffer(PREFIX + name, tensor, persistent=False)
        module._derived_names = tuple(weights)
        module._derived_stamp = _stamp(module)
        layers.append(module)
    model.__dict__["_derived_layers"] = layers
    return len(layers)


def refresh(model: nn.Module) -> int:
    """Recompute, in place (same addresses), the derived weights that `attach(model)` attached
    whose layers' parameters changed since; returns how many layers were recomputed. ~20 us per
    layer when none did."""
    count = 0
    for module in _attached(model):
        names = getattr(module, "_derived_names", None)
        if names is None or _stamp(module) == module._derived_stamp:
            continue
        with torch.no_grad():
            weights = module.derived_weights()
            for name in names:
                buffer = getattr(module, PREFIX + name)
                fresh = weights[name].to(buffer.dtype)
                if fresh.shape != buffer.shape or fresh.device != buffer.device:
                    setattr(module, PREFIX + name, fresh)  # the module was moved: a new buffer
                else:
                    buffer.copy_(fresh)
        module._derived_stamp = _stamp(module)
        count += 1
    return count


def detach(model: nn.Module) -> None:
    """Remove every derived-weight buffer (layers compute their weights per call again)."""
    for module in _participants(model):
        names = getattr(module, "_derived_names", None)
        if names is None:
            continue
        for name in names:
            delattr(module, PREFIX + name)
        del module._derived_names, module._derived_stamp
    model.__dict__.pop("_derived_layers", None)


def derived(module: nn.Module, name: str) -> torch.Tensor | None:
    """The layer's cached weight `name`, or None where the layer must compute it itself: with
    gradients on (training differentiates through the computation), when none is attached, or
    (outside torch.compile) when the layer's parameters changed since it was computed. None too
    for a name the layer did not derive (e.g. `phase_bias` of a convolution without bias)."""
    names = getattr(module, "_derived_names", None)
    if torch.is_grad_enabled() or names is None or name not in names:
        return None
    if not torch.compiler.is_compiling() and _stamp(module) != module._derived_stamp:
        return None
    return getattr(module, PREFIX + name)


def layout_of(weight: torch.Tensor) -> torch.memory_format:
    """The memory format a weight derived from `weight` should keep: channels_last where `weight`
    is (the CUDA generation path converts the model), else contiguous."""
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
