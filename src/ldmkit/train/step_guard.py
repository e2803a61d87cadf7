"""Per-step decisions shared by both stages: mixed precision, and skip-or-stop.

`Precision` turns "fp32" / "bf16" / "fp16" into an autocast context and, for fp16, a
GradScaler (fp16's narrow range needs loss scaling; bf16 has fp32's range and does not).

`StepGuard` makes the decisions that every rank must make identically or the ranks deadlock in
their next collective: is this step's loss finite (apply the update or skip it), and has a stop
signal arrived on any rank. The skip is decided on the device, with no host sync: `judge`
returns a 0/1 tensor that the fused AdamW takes as its `found_inf` and the EMA as its weight, so
the CPU can queue the next steps while the GPU runs this one. The host learns about the steps only at `settle`
(every few steps, and before anything that reads the model): one read of the queued losses
and flags, the streak check, and the all-reduced stop flag. On one small UNet a host read
every step cost a fifth of the step time (benchmarks/NOTES.md, v3).
"""
from __future__ import annotations

import contextlib
import math
from typing import ContextManager

import torch

from ldmkit.errors import UserError
from ldmkit.train.distributed import DistInfo, all_reduce_sum
from ldmkit.train.signals import RELAYED_STOP, StopSignal

# Steps between host reads of the queued losses and skip flags (StepGuard.settle). The CPU may
# run this many steps ahead of the GPU; a stop or a streak of bad steps is seen this late.
SETTLE_EVERY = 25

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


def slow_precision_note(name: str, device: torch.device) -> str | None:
    """A warning for bf16 autocast on a CPU that has no bf16 arithmetic of its own (no AVX512-BF16
    or AMX), where PyTorch emulates it: the fashion-mnist preset's VAE step ran at 3.6 img/s in
    bf16 against 31 in fp32 on a 2-core AMD EPYC (benchmarks/NOTES.md v28). None otherwise."""
    if name != "bf16" or device.type != "cpu":
        return None
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN's check: nothing known, nothing said
        return None
    if native:
        return None
    return ("precision bf16 on this CPU, which has no bf16 arithmetic of its own, trains several times slower "
            "than fp32 (about 9x for the fashion-mnist preset's VAE on a 2-core machine): pass --precision fp32")


class NonFiniteLossError(UserError):
    """Training stopped after too many non-finite losses in a row."""


class StepGuard:
    """Skip updates on non-finite losses, stop after `max_bad_steps` in a row, agree on stops.

    Per step: `judge(loss, grad_norm)` (device-side, no sync), then `record` its row. Every few
    steps: `settle()`.
    """

    def __init__(self, dist: DistInfo, stop: StopSignal, *, max_bad_steps: int = 5) -> None:
        self.dist = dist
        self.stop = stop
        self.max_bad_steps = max_bad_steps
        self.bad_streak = 0
        self.skipped = 0
        # Set by settle() from the all-reduced flag: the same on every rank at the same step.
        # Loops must break on this, never on the local signal flag, or ranks part ways.
        self.stop_agreed = False
        self._pending: list[torch.Tensor] = []  # per step: [mean loss over ranks, bad]

    def judge(self, loss: torch.Tensor, grad_norm: torch.Tensor, *,
              scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(applied, row): `applied` is 1.0 if this step's update may be applied, else 0.0; `row`
        is the step's entry for `settle` ([mean loss over ranks, bad]), for `record`. Device
        tensors, no host sync, nothing recorded: a captured step can run it (step_graph.py).

        `grad_norm` is the norm after the gradients' all-reduce (equal on every rank) and after the
        GradScaler's unscale: a finite loss can still give inf gradients, and the update is
        applied only if both are finite. With `scaled` (fp16 and a GradScaler), inf gradients
        are the scaler's routine and do not count towards the stop after `max_bad_steps`.
        """
        stats = all_reduce_sum(torch.stack([loss.detach().float(), grad_norm.detach().float().to(loss.device)]),
                               self.dist)
        finite_loss = torch.isfinite(stats[0])
        applied = (finite_loss & torch.isfinite(stats[1])).float()
        bad = (~finite_loss).float() if scaled else 1.0 - applied
        return applied, torch.stack([stats[0] / self.dist.world_size, bad])

    def record(self, row: torch.Tensor) -> None:
        """Queue a step's row from `judge` for the next `settle` (a replayed graph's row must be
        copied first: the next replay overwrites it)."""
        self._pending.append(row)

    def stop_requested_here(self) -> bool:
        """Whether to settle now because of a stop: a host check, no device sync. One process
        settles at once; under torchrun the ranks learn of a stop at their next regular settle."""
        return not self.dist.distributed and self.stop.requested

    def settle_due(self, step: int, *, total_steps: int, periodic: bool) -> bool:
        """Whether the loop settles after `step`: every SETTLE_EVERY steps, before periodic work
        (a log line, checkpoint, ...), at the last step, and at once on a stop here."""
        return step % SETTLE_EVERY == 0 or periodic or step == total_steps or self.stop_requested_here()

    def settle(self, step: int, last_saved: int | None) -> list[float]:
        """The mean losses of the steps since the last settle (one host sync); `step` is the
        stage's step count now, `last_saved` the step of its last checkpoint (for the error).

        Counts skipped steps, raises `NonFiniteLossError` after too many in a row, and sets
        `stop_agreed` if a stop was requested on any rank.
        """
        flag = torch.tensor([float(self.stop.requested)], device=self._device())
        stops = all_reduce_sum(flag, self.dist)
        rows = torch.cat([torch.stack(self._pending).flatten(), stops]) if self._pending else stops
        values = rows.tolist()
        first_step = step - len(self._pending) + 1
        self._pending.clear()
        losses = values[:-1:2]
        for i, bad in enumerate(values[1:-1:2]):
            self._record(not bad, first_step + i, last_saved)
        if values[-1] > 0:
            self.stop.request(RELAYED_STOP)
            self.stop_agreed = True
        return losses

    def _device(self) -> torch.device:
        return self._pending[0].device if self._pending else self.dist.device

    def _record(self, ok: bool, step: int, last_saved: int | None) -> None:
        if ok:
            self.bad_streak = 0
            return
        self.bad_streak += 1
        self.skipped += 1
        if self.bad_streak >= self.max_bad_steps:
            where = f"the last checkpoint (step {last_saved}) is intact" if last_saved else "no checkpoint was written"
            raise NonFiniteLossError(
                f"the loss was not finite for {self.bad_streak} steps in a row (at step {step}); "
                f"training stopped and {where}. Try a lower learning rate, bf16 instead of fp16, "
                "or a smaller grad_clip."
            )


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether AdamW(fused=True) runs on `device`: it takes `judge`'s skip as its found_inf."""
    return device.type in ("cuda", "cpu")


def apply_update(optimizer: torch.optim.Optimizer, applied: torch.Tensor, scaler=None) -> None:
    """`optimizer.step()` where `applied` (from `StepGuard.judge`) is 1, a no-op where it is 0.

    A fused AdamW skips on the device (its `found_inf`, the hook GradScaler uses); other
    optimizers need the host to read the flag. With a GradScaler, the scaler decides.
    """
    if scaler is not None:
        scaler.step(optimizer)
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = 1.0 - applied
        optimizer.step()
    elif applied.item():
        optimizer.step()


def logged_loss(losses: list[float]) -> float:
    """The mean of a log interval's settled losses, the skipped (non-finite) steps left out, as
    they changed nothing; NaN when every step was skipped."""
    finite = [v for v in losses if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")
