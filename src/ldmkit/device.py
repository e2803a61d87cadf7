"""Choosing the torch device and dtype from a user's `--device` / `--precision` words."""

from __future__ import annotations

import torch

from ldmkit.errors import UserError


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """Turn "auto" (or None) / "cpu" / "cuda" / "cuda:1" / "mps" into a device that exists here.

    `auto` picks CUDA when present, else the CPU; a bare "cuda" means this process's GPU
    (`local_rank` under torchrun). Asking for a device that is not there is a `UserError`.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} was asked for, but PyTorch sees no CUDA GPU here (use --device cpu, "
                            "or device='cpu' from Python)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise UserError(f"device {device} does not exist ({torch.cuda.device_count()} GPUs visible)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' was asked for, but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):  # "meta" holds no values: loading and generating fail late
        raise UserError(f"device {name!r} cannot run ldmkit: use auto, cpu, cuda, cuda:N or mps")
    return device


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(precision: str) -> torch.dtype:
    """Map `fp32` / `bf16` / `fp16` to a torch dtype."""
    if precision not in _DTYPES:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(_DTYPES)}")
    return _DTYPES[precision]
