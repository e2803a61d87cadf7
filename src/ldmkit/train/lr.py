"""Learning-rate schedule: linear warm-up, then constant or cosine decay.

A plain function of the step (nanoGPT's `get_lr`), so resuming needs no scheduler state: the
loop sets `param_group["lr"] = lr_at(step, ...)` before every optimizer step.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_at(
    step: int,
    *,
    base_lr: float,
    warmup: int,
    total_steps: int,
    schedule: str = "constant",
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warm-up ramps linearly from `base_lr / warmup` at step 0 to `base_lr` at step
    `warmup - 1` (never exactly 0, so the first step moves). After it, "constant" holds
    `base_lr`; "cosine" decays to `min_lr_ratio * base_lr` at `total_steps`
    (Loshchilov & Hutter 2017, without restarts).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r}; expected one of {SCHEDULES}")
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / decay_steps))
    min_lr = min_lr_ratio * base_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
