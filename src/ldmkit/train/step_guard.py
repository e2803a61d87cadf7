"""Per-step decisions shared by both stages: mixed precision, and skip-or-stop.

`Precision` turns "fp32" / "bf16" / "fp16" into an autocast context and, for fp16, a
GradScaler (fp16's narrow range needs loss scaling; bf16 has fp32's range and does not).

`StepGuard` makes the decisions that every rank must make identically or DDP deadlocks: is
this step's loss finite (apply the update or skip it), and has a stop signal arrived on any
rank. Both go through one small all-reduce per step, and one host sync reads the result;
the mean loss for logging comes with it for free.
"""
from __future__ import annotations

import contextlib
import math
from typing import ContextManager

import torch

from ldmkit.errors import UserError
from ldmkit.train.distributed import DistInfo, all_reduce_sum
from ldmkit.train.signals import StopSignal

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast dtype and optional GradScaler for a precision name on a device."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in _AUTOCAST_DTYPES:
            raise UserError(f"precision must be one of {sorted(_AUTOCAST_DTYPES)}, got {name!r}")
        if name == "fp16" and device.type != "cuda":
            raise UserError("precision fp16 needs a CUDA device; use bf16 or fp32 here")
        self.name = name
        self.device = device
        self.dtype = _AUTOCAST_DTYPES[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


class NonFiniteLossError(UserError):
    """Training stopped after too many non-finite losses in a row."""


class StepGuard:
    """Skip updates on non-finite losses, stop after `max_bad_steps` in a row, agree on stops."""

    def __init__(self, dist: DistInfo, stop: StopSignal, *, max_bad_steps: int = 5) -> None:
        self.dist = dist
        self.stop = stop
        self.max_bad_steps = max_bad_steps
        self.bad_streak = 0
        self.skipped = 0
        # Set by check() from the all-reduced flag: the same on every rank at the same step.
        # Loops must break on this, never on the local signal flag, or ranks part ways.
        self.stop_agreed = False

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> tuple[float, bool, bool]:
        """(mean loss over ranks, whether the update may be applied, whether to stop now).

        `grad_norm` (the norm after DDP's all-reduce, hence equal on every rank) is checked
        too: a finite loss can still give inf gradients. Pass None when a GradScaler decides
        about inf gradients itself.
        """
        norm = grad_norm.detach().float() if grad_norm is not None else torch.zeros((), device=loss.device)
        flag = torch.tensor(float(self.stop.requested), device=loss.device)
        stats = all_reduce_sum(torch.stack([loss.detach().float(), norm.to(loss.device), flag]), self.dist)
        loss_sum, norm_sum, stops = stats.tolist()  # the one host sync of the step
        ok = math.isfinite(loss_sum) and math.isfinite(norm_sum)
        if stops > 0:
            self.stop.request("a signal on another rank")
            self.stop_agreed = True
        return loss_sum / self.dist.world_size, ok, stops > 0

    def record(self, ok: bool, step: int, last_good_step: int | None) -> None:
        """Count a skipped step; raise `NonFiniteLossError` after too many in a row."""
        if ok:
            self.bad_streak = 0
            return
        self.bad_streak += 1
        self.skipped += 1
        if self.bad_streak >= self.max_bad_steps:
            where = f"the last checkpoint (step {last_good_step}) is intact" if last_good_step else "no checkpoint was written"
            raise NonFiniteLossError(
                f"the loss was not finite for {self.bad_streak} steps in a row (at step {step}); "
                f"training stopped and {where}. Try a lower learning rate, bf16 instead of fp16, "
                "or a smaller grad_clip."
            )
