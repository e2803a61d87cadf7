"""Choosing the torch device and dtype from a user's `--device` / `--precision` words."""

from __future__ import annotations

import torch

from ldmkit.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; `cuda` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU here (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from err


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(precision: str) -> torch.dtype:
    """Map `fp32` / `bf16` / `fp16` to a torch dtype."""
    if precision not in _DTYPES:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(_DTYPES)}")
    return _DTYPES[precision]
