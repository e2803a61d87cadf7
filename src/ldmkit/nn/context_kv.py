"""The cross-attentions' keys and values of a generation job's context, computed once.

A text-conditioned UNet's cross-attentions project the same context (SD: `[2B, 77, 768]` text
features, conditional and unconditional halves) to keys and values at every sampling step, the
same numbers 25 times. In the SD UNet at batch 2 (E2) these are 32 small matmuls of the ~630
kernels a step: without them E2's matmul time fell 1.7-4.5 ms of ~164 ms of GPU time, within
the 3% its wall time moves between processes (benchmarks/NOTES.md v11).

`refresh(model, context)` computes them into non-persistent buffers of each cross-attention
layer (never saved in a state dict; static addresses under CUDA graphs, refreshed in place) when
the context is not the one they came from, and `cached(layer, context)` hands them to the layer.

A layer uses them only with gradients off and, outside torch.compile, only for the very tensor
they came from (the same object at the same version counter: the cache keeps a reference, so its
memory cannot be reused by another tensor). Inside a compiled graph that check cannot run, so
code that compiles a model with the cache calls `refresh` before each call: `CompiledUNet` does.
The autocast state at `refresh` is part of the key, as it sets the keys' precision.

A layer takes part by having `is_cross = True` and `project_context(context) -> (k, v)`.
"""

from __future__ import annotations

import torch
from torch import nn

_K, _V = "_context_k", "_context_v"


def _key(context: torch.Tensor) -> tuple:
    device = context.device.type
    return (context._version, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))


def _layers(model: nn.Module) -> list[nn.Module]:
    # listed on the model once: walking the SD UNet's 643 modules with getattr takes ~6 ms of CPU
    # (nn.Module answers a missing attribute with an exception), on E2's critical path
    layers = model.__dict__.get("_context_kv_layers")
    if layers is None:
        layers = [m for m in model.modules() if getattr(m, "is_cross", False)]
        model.__dict__["_context_kv_layers"] = layers
    return layers


def refresh(model: nn.Module, context: torch.Tensor | None) -> bool:
    """Make every cross-attention of `model` hold `context`'s keys and values (computed in place
    where the shapes allow); True when they were computed, False when already current or when
    there is nothing to cache."""
    if context is None:
        return False
    stamp = (context, _key(context))
    held = model.__dict__.get("_context_kv_of")
    if held is not None and held[0] is context and held[1] == stamp[1]:
        return False
    layers = _layers(model)
    if not layers:
        return False
    with torch.no_grad():
        for layer in layers:
            k, v = layer.project_context(context)  # [B, M, inner] each
            old_k, old_v = getattr(layer, _K, None), getattr(layer, _V, None)
            if old_k is not None and (old_k.shape, old_k.dtype, old_k.device) == (k.shape, k.dtype, k.device):
                old_k.copy_(k)  # same addresses: a CUDA graph replays with the new values
                old_v.copy_(v)
            else:
                layer.register_buffer(_K, k, persistent=False)
                layer.register_buffer(_V, v, persistent=False)
            layer._context_kv_of = stamp
    model._context_kv_of = stamp
    return True


def cached(layer: nn.Module, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layer's keys and values of `context`, or None where it must project them itself: with
    gradients on, when none are held, or (outside torch.compile) for another context."""
    if torch.is_grad_enabled():
        return None
    k = getattr(layer, _K, None)
    if k is None:
        return None
    if not torch.compiler.is_compiling():
        held = layer._context_kv_of
        if held[0] is not context or held[1] != _key(context):
            return None
    return k, getattr(layer, _V)


def detach(model: nn.Module) -> None:
    """Remove every cached key and value and the references to the context."""
    for layer in _layers(model):
        if getattr(layer, _K, None) is not None:
            delattr(layer, _K)
            delattr(layer, _V)
            del layer._context_kv_of
    model.__dict__.pop("_context_kv_of", None)
    model.__dict__.pop("_context_kv_layers", None)
