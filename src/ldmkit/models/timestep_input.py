"""The timesteps a UNet accepts, checked before `torch.as_tensor` or a device copy refuses them in
its own words ("new(): invalid data type 'str'", "Cannot copy out of meta tensor"), and before a
complex or boolean value is silently cast to a float index."""

from __future__ import annotations

import numbers

import torch

from ldmkit.errors import UserError


def timesteps_tensor(t: object, batch: int, device: torch.device, name: str = "t",
                     owner: str = "the UNet") -> torch.Tensor:
    """`t` as a `[batch]` tensor on `device`, or a `UserError` naming `name`.

    Accepted: a real number, or a 0-d / `[batch]` tensor, list or array of real numbers (ints or
    floats: fractional indices are allowed). A tensor on the CPU is copied to `device`, as a number
    is (torch itself mixes CPU scalars into device arithmetic); one on any other device is refused,
    as x is. Only metadata is read: no value leaves the device, so this costs no sync."""
    label = f"{name} (the timesteps)" if name == "t" else name
    expected = f"{label} must be a number or a tensor of shape [{batch}]"
    if isinstance(t, torch.Tensor):
        if t.device != device and t.device.type != "cpu":
            raise UserError(f"{name} is on {t.device}, {owner} on {device}: move it there "
                            f"({name}.to({str(device)!r}))")
    elif isinstance(t, bool) or not isinstance(t, (numbers.Real, list, tuple)) and not hasattr(t, "__array__"):
        raise UserError(f"{expected}, got {repr(t)[:60]}")  # None, a str, a complex number, a bool
    elif not isinstance(t, numbers.Real):
        try:  # a list or an array: its elements may still be anything
            t = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"{expected}, got {repr(t)[:60]}") from None
    t = torch.as_tensor(t, device=device)
    if t.dtype == torch.bool or t.is_complex():
        raise UserError(f"{label} must hold real numbers (ints or floats), got {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise UserError(f"{name} must be a scalar or have shape [{batch}], got {tuple(t.shape)}")
    return t  # [batch]
