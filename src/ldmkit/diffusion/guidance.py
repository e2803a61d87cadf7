"""Classifier-free guidance as a wrapper around the denoiser (Ho & Salimans 2022).

The network is called as `model_fn(x, t, **kwargs)`, where each conditioning keyword
(`class_labels`, `cond`, `context`, ...) is a tensor batched on dim 0 or None. The guided
denoiser runs the conditional and unconditional halves in ONE forward pass by concatenating
[cond; uncond] on the batch dimension, then combines

    pred = uncond + s (cond - uncond)          (Ho & Salimans 2022, eq. 6 with s = 1 + w)

and optionally rescales it towards the conditional prediction's per-sample std
(Lin et al. 2024, eqs. 15-16), which counters over-exposure at large s.
At s = 1 the unconditional pass is skipped and the result is exactly the conditional
prediction; at s = 0 the conditional pass is skipped.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ldmkit.errors import UserError

ModelFn = Callable[..., Tensor]


def _concat_kwargs(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    """[cond; uncond] for every keyword; both sides must name the same keywords."""
    if set(cond) != set(uncond):
        raise UserError(
            f"conditional and unconditional inputs must name the same keywords, got "
            f"{sorted(cond)} and {sorted(uncond)}"
        )
    merged: dict[str, Any] = {}
    for key, c in cond.items():
        u = uncond[key]
        if c is None and u is None:
            merged[key] = None
        elif isinstance(c, Tensor) and isinstance(u, Tensor):
            merged[key] = torch.cat([c, u.to(device=c.device, dtype=c.dtype)])
        else:
            raise UserError(f"guidance input {key!r} must be a tensor (or None) on both sides")
    return merged


def check_rescale(rescale: float) -> float:
    """Validate a guidance rescale factor phi: a number in [0, 1] (numpy's, or a 0-d tensor, read
    once per call), returned as a Python float."""
    if isinstance(rescale, Tensor) and rescale.dim() == 0 and rescale.is_floating_point():
        rescale = float(rescale)
    if isinstance(rescale, bool) or not isinstance(rescale, numbers.Real) or not 0 <= rescale <= 1:
        raise UserError(f"guidance rescale must be in [0, 1], got {rescale!r}")
    return float(rescale)


def check_scale(scale: float | Tensor) -> float | Tensor:
    """Validate a guidance scale s: a finite real number (numpy's too), or a 0-d real tensor, whose
    value is not read here (that would wait on the device). None gave "unsupported operand type(s)"
    at the first step and NaN a NaN sample; a bool is a mistake, as the pipeline's cfg rule has it."""
    if isinstance(scale, Tensor):
        ok = scale.dim() == 0 and not scale.is_complex() and scale.dtype != torch.bool
    else:
        ok = isinstance(scale, numbers.Real) and not isinstance(scale, bool) and math.isfinite(scale)
    if not ok:
        raise UserError(f"guidance scale must be a finite number (or a 0-d tensor), got {scale!r}")
    return scale


def rescale_guidance(guided: Tensor, cond: Tensor, rescale: float) -> Tensor:
    """Lin et al. 2024, eq. 15: x_rescaled = x_cfg std(x_pos) / std(x_cfg), per sample;
    eq. 16: phi x_rescaled + (1 - phi) x_cfg."""
    dims = tuple(range(1, guided.dim()))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return rescale * (guided * ratio) + (1 - rescale) * guided


def classifier_free_guidance(
    model_fn: ModelFn,
    scale: float,
    *,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any],
    rescale: float = 0.0,
) -> Callable[[Tensor, Tensor], Tensor]:
    """A denoiser `(x, t) -> guided raw prediction` for the samplers.

    Args:
        model_fn: `model_fn(x, t, **kwargs) -> raw prediction` (e.g. `UNet.forward`).
        scale: guidance scale s (1 = plain conditional model), a finite number. A 0-d tensor is
            taken unchecked, and compared with 0 and 1 at every step (on a GPU, a wait each time).
        cond, uncond: keyword tensors for the conditional and null condition, batched like x
            (e.g. `{"class_labels": labels}` and `{"class_labels": null_labels}`).
        rescale: phi in [0, 1] of Lin et al. 2024 (0 = off).
    """
    rescale = check_rescale(rescale)
    check_scale(scale)
    cond, uncond = dict(cond), dict(uncond)
    both = _concat_kwargs(cond, uncond) if scale not in (0, 1) else None

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        if scale == 1:
            return model_fn(x, t, **cond)
        if scale == 0:
            return model_fn(x, t, **uncond)
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **both)  # [2B, ...]
        pred_cond, pred_uncond = out.chunk(2)
        guided = pred_uncond + scale * (pred_cond - pred_uncond)
        return rescale_guidance(guided, pred_cond, rescale) if rescale > 0 else guided

    return denoiser


def class_guidance(model_fn: ModelFn, labels: Tensor, null_class: int, scale: float, *,
                   rescale: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Classifier-free guidance towards class `labels` ([B] ids); the unconditional half uses
    the null class id `null_class` (ldmkit's UNet reserves id `num_classes` for it)."""
    null = torch.full_like(labels, null_class)
    return classifier_free_guidance(model_fn, scale, cond={"class_labels": labels},
                                    uncond={"class_labels": null}, rescale=rescale)
