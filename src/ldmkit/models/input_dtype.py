"""The dtype a network's input must have, checked before its first layer says it in torch's words
("Input type (c10::Half) and bias type (float) should be the same")."""

from __future__ import annotations

import torch

from ldmkit.errors import UserError


def check_input_dtype(x: torch.Tensor, weight: torch.Tensor, what: str) -> None:
    """`UserError` unless `x` can meet `weight` in a layer: floating point, and of the weight's
    dtype unless autocast casts both. uint8 images are the common mistake: say how to scale them."""
    if not x.is_floating_point():
        raise UserError(f"{what} must be a floating-point tensor, got {x.dtype} (images go in as floats in "
                        "[-1, 1]: uint8 pixels p as p.float() / 127.5 - 1)")
    if x.dtype == weight.dtype or torch.compiler.is_compiling():  # compiled callers cast on purpose
        return
    if not torch.is_autocast_enabled(x.device.type):
        raise UserError(f"the dtype of {what} is {x.dtype}, the model's weights' {weight.dtype}: cast one to the other "
                        f"(x.to({weight.dtype}) or model.to({x.dtype})), or run under torch.autocast")
