"""Exponential moving average of a model's parameters.

The average lives in a full copy of the model (as in DiT's `ema` module), so sampling from it
is just calling it, and the inference file stores it like any model. Each update is
`ema <- decay * ema + (1 - decay) * param`, done with one fused `_foreach_lerp_` call.

With `warmup=True` the decay ramps up as `min(decay, (1 + n) / (10 + n))` after `n` updates
(the schedule of TensorFlow's ExponentialMovingAverage with num_updates): early on the
average follows the fast-moving weights instead of remembering the random initialisation,
which matters for short runs.

`update(model, gate)` takes the training step's 0/1 "update applied" tensor (StepGuard.judge):
a skipped step leaves the average and the update count alone, decided on the device with no
host sync. The count then lives in a device tensor, and the warm-up decay is computed there.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ldmkit.nn.derived_weights import PREFIX as DERIVED_PREFIX


class EMA:
    """A moving average of `model`'s floating-point parameters; buffers are copied as-is."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self._count = 0  # an int, or a float32 device tensor once gated updates have begun
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._listed_for: nn.Module | None = None  # the model whose tensors `_listed` holds
        self._listed: tuple = ()

    @property
    def num_updates(self) -> int:
        """Updates applied so far (a host sync when they are counted on the device)."""
        return int(self._count.item()) if isinstance(self._count, torch.Tensor) else self._count

    @num_updates.setter
    def num_updates(self, value: int) -> None:
        self._count = int(value)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, gate: torch.Tensor | None = None) -> None:
        """Move the average one step towards `model` (the unwrapped module, not its compiled form); with a
        `gate` tensor, only where it is 1 (see the module doc)."""
        ema_params, params, buffers = self._pairs(model)
        if gate is None:
            # lerp(ema, p, 1 - decay) == decay * ema + (1 - decay) * p
            torch._foreach_lerp_(ema_params, params, 1.0 - self.current_decay())
            self.num_updates += 1
        else:
            count = self._device_count(gate.device)
            decay = torch.full_like(count, self.decay)
            if self.warmup:
                decay = torch.minimum(decay, (1.0 + count) / (10.0 + count))
            # ema + w * (p - ema), w = (1 - decay) * gate: the lerp above with a tensor weight
            step = torch._foreach_sub(params, ema_params)
            torch._foreach_mul_(step, (1.0 - decay) * gate)
            torch._foreach_add_(ema_params, step)
            count.add_(gate)
        for ema_buffer, buffer in buffers:
            ema_buffer.copy_(buffer)

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
        """(average's parameters, `model`'s, buffer pairs), listed once per model: walking a
        module tree costs ~1 ms of host time per call at UNet size, and this runs every step."""
        if self._listed_for is not model:
            ema_params = [p for p in self.module.parameters() if p.dtype.is_floating_point]
            params = [p for p in model.parameters() if p.dtype.is_floating_point]  # under no_grad: no detach
            if len(ema_params) != len(params):
                raise ValueError("EMA.update was given a model of a different architecture")
            ema_buffers, buffers = _state_buffers(self.module), _state_buffers(model)
            if len(ema_buffers) != len(buffers):
                raise ValueError("EMA.update was given a model with other buffers than the average's")
            self._listed = (ema_params, params, list(zip(ema_buffers, buffers)))
            self._listed_for = model
        return self._listed

    def _device_count(self, device: torch.device) -> torch.Tensor:
        if not isinstance(self._count, torch.Tensor):
            self._count = torch.tensor(float(self._count), device=device)
        return self._count

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


def _state_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The model's buffers, less the weights layers cache for generation (nn/derived_weights.py):
    those follow the parameters, not the average."""
    return [b for name, b in model.named_buffers() if not name.rsplit(".", 1)[-1].startswith(DERIVED_PREFIX)]
