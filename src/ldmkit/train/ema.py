"""Exponential moving average of a model's parameters.

The average lives in a full copy of the model (as in DiT's `ema` module), so sampling from it
is just calling it, and the inference file stores it like any model. Each update is
`ema <- decay * ema + (1 - decay) * param`, done with one fused `_foreach_lerp_` call.

With `warmup=True` the decay ramps up as `min(decay, (1 + n) / (10 + n))` after `n` updates
(the schedule of TensorFlow's ExponentialMovingAverage with num_updates): early on the
average follows the fast-moving weights instead of remembering the random initialisation,
which matters for short runs.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A moving average of `model`'s floating-point parameters; buffers are copied as-is."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards `model` (the unwrapped module, not DDP)."""
        decay = self.current_decay()
        ema_params = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        params = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        if len(ema_params) != len(params):
            raise ValueError("EMA.update was given a model of a different architecture")
        # lerp(ema, p, 1 - decay) == decay * ema + (1 - decay) * p
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "module": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["module"])
