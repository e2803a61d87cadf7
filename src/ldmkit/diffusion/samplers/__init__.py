"""Samplers: pure functions from start noise to a clean sample, all with one signature

    sampler(denoiser, x_T, schedule, *, steps, prediction="eps", noise=None, callback=None,
            init=None, strength=1.0, mask=None, **sampler_options) -> x_0

where `denoiser(x_t, t) -> raw prediction` (t a float32 [B] tensor of timestep indices in
[0, T), fractional allowed) and `x_T` is standard-normal noise (or None to draw it from the
`SeededNoise` stream `noise`). x_T is taken as the variance-preserving sample x_t at the
first level for every sampler (exact for unit-variance latents); `callback(step_index, t, x)`
gets t as a Python float and x in that same frame after each step. All coefficients are
computed before the loop, which reads nothing back from the device.

Default step counts (what each needs to converge on smooth data; see tests/test_samplers.py):

    =========  =====  ===================================================================
    name       steps  method
    =========  =====  ===================================================================
    dpmpp-2m      25  DPM-Solver++(2M), Lu et al. 2022 (Alg. 2); deterministic
    ddim          50  DDIM, Song et al. 2021 (eq. 12); deterministic at eta = 0
    euler         50  Euler in sigma space, Karras et al. 2022; deterministic
    heun          25  Heun, Karras et al. 2022 (Alg. 1); 2 * steps - 1 network calls
    ddpm           T  DDPM ancestral, Ho et al. 2020 (the full chain, T = 1000 usually);
                      fewer steps run on a strided grid (~100-250 suffice for smooth data;
                      'leading' strides refuse a count that leaves over a tenth of the
                      schedule above its first step, e.g. 600: `spaced_timesteps`)
    =========  =====  ===================================================================

Options per sampler: `spacing` ("leading" | "linspace" | "trailing") and `steps_offset`
(all); `eta` and `set_alpha_to_one` (ddim); `karras_sigmas` (dpmpp-2m, euler, heun).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ldmkit.diffusion.noise import SeededNoise
from ldmkit.diffusion.samplers.context import Callback, Denoiser, SamplingContext
from ldmkit.diffusion.samplers.ddim import ddim
from ldmkit.diffusion.samplers.ddpm import ddpm
from ldmkit.diffusion.samplers.dpm_solver import dpmpp_2m
from ldmkit.diffusion.samplers.euler import euler, heun
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.errors import UserError

Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {
    "dpmpp-2m": dpmpp_2m,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "ddpm": ddpm,
}

# None: the schedule's full length T.
DEFAULT_STEPS: dict[str, int | None] = {"dpmpp-2m": 25, "ddim": 50, "euler": 50, "heun": 25, "ddpm": None}


def get_sampler(name: str) -> Sampler:
    """The sampler function registered as `name`."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_options(name: str) -> list[str]:
    """Keyword options `name` accepts beyond the shared ones."""
    shared = {"denoiser", "x_T", "schedule", "steps", "prediction", "noise", "callback"}
    return [p for p in inspect.signature(get_sampler(name)).parameters if p not in shared]


def _check_option_type(sampler: str, name: str, value: object, default: object) -> None:
    """`UserError` unless `value` is of the kind of the option's default (`eta="0.5"` was torch's
    TypeError deep in the loop, `karras_sigmas="no"` a truthy string). numpy's numbers count as
    Python's, its bools too (`sample` makes them Python bools); tensors do not, for any option."""
    if isinstance(default, bool):
        ok = isinstance(value, (bool, np.bool_))
    elif isinstance(default, int):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:  # init, mask: checked where they are used
        return
    if not ok:
        raise UserError(f"sampler {sampler!r}: {name} must be a {type(default).__name__}, got {value!r}")


def sample(
    denoiser: Denoiser,
    x_T: Tensor | None,
    schedule: NoiseSchedule,
    *,
    sampler: str = "dpmpp-2m",
    steps: int | None = None,
    prediction: str = "eps",
    noise: SeededNoise | None = None,
    callback: Callback | None = None,
    **options,
) -> Tensor:
    """Run the sampler called `sampler`; `steps=None` takes its default (table above).

    Unknown option names raise UserError naming the options that sampler accepts.
    """
    fn = get_sampler(sampler)
    allowed = sampler_options(sampler)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(
            f"sampler {sampler!r} has no option {', '.join(unknown)}; it takes {', '.join(allowed)}"
        )
    for name, value in options.items():
        _check_option_type(sampler, name, value, inspect.signature(fn).parameters[name].default)
    options = {k: bool(v) if isinstance(v, np.bool_) else v for k, v in options.items()}
    if steps is None:
        steps = DEFAULT_STEPS[sampler] or schedule.num_steps
    return fn(
        denoiser, x_T, schedule, steps=steps, prediction=prediction, noise=noise, callback=callback, **options
    )


class _FirstCall(Exception):
    """Raised by `check_sampler`'s stand-in network: the sampler got as far as its first call."""


def check_sampler(name: str, schedule: NoiseSchedule, *, steps: int | None = None, prediction: str = "eps",
                  **options) -> None:
    """`UserError` for whatever `sample(..., sampler=name)` would refuse: the name, the options,
    the step count and its grid, a prediction the first level cannot use. Every sampler checks
    all of that before its first network call, so this runs it on one number up to that call
    (no network, microseconds): a command refuses before it loads data or draws a progress bar."""

    def first_call(x: Tensor, t: Tensor) -> Tensor:
        raise _FirstCall

    try:
        sample(first_call, torch.zeros(1), schedule, sampler=name, steps=steps, prediction=prediction, **options)
    except _FirstCall:
        pass


__all__ = [
    "DEFAULT_STEPS",
    "SAMPLERS",
    "Callback",
    "Denoiser",
    "SamplingContext",
    "check_sampler",
    "ddim",
    "ddpm",
    "dpmpp_2m",
    "euler",
    "get_sampler",
    "heun",
    "sample",
    "sampler_options",
]
