"""Euler and Heun samplers in the sigma (VE-equivalent) formulation of Karras et al. 2022.

With x~ = x_t / sqrt(a_t) = x_0 + sigma eps, the probability-flow ODE is
dx~/dsigma = (x~ - x0_hat) / sigma = eps_hat (Karras et al. 2022, eqs. 1 and 3 with
sigma(t) = t, s(t) = 1).
Euler takes one slope per step; Heun (Karras et al. 2022, Alg. 1) averages it with the slope
at the Euler end point, except on the last step to sigma = 0, where it stays Euler.
The state between steps is kept in the VP frame (x_t = sqrt(a) x~), as for every sampler.
"""

from __future__ import annotations

from torch import Tensor

from ldmkit.diffusion.noise import SeededNoise
from ldmkit.diffusion.samplers.context import Callback, Denoiser, SamplingContext
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.diffusion.timesteps import (
    StepGrid,
    check_steps,
    finite_grid,
    grid_from_timesteps,
    karras_grid,
    spaced_timesteps,
)


def _sigma_grid(schedule: NoiseSchedule, steps: int, spacing: str, offset: int, karras: bool) -> StepGrid:
    """diffusers' EulerDiscreteScheduler levels: "linspace" spacing with fractional t and
    sigma interpolated linearly in t, or Karras sigmas; then sigma = 0. A level at alpha_bar = 0
    (zero terminal SNR) is moved to the schedule's `alpha_bar_floor` (a finite sigma)."""
    if karras:
        return karras_grid(schedule, steps)
    t = spaced_timesteps(schedule.num_steps, steps, spacing, offset=offset, fractional=True)
    return finite_grid(grid_from_timesteps(schedule, t, 1.0), schedule)


def _run(
    heun: bool,
    denoiser: Denoiser,
    x_T: Tensor | None,
    schedule: NoiseSchedule,
    steps: int,
    prediction: str,
    noise: SeededNoise | None,
    callback: Callback | None,
    spacing: str,
    steps_offset: int,
    karras_sigmas: bool,
    init: Tensor | None,
    strength: float,
    mask: Tensor | None,
) -> Tensor:
    check_steps(steps, schedule)
    grid = _sigma_grid(schedule, steps, spacing, steps_offset, karras_sigmas)
    ctx = SamplingContext(
        denoiser, x_T, schedule, grid, prediction=prediction,
        noise=noise, callback=callback, init=init, strength=strength, mask=mask,
    )
    alphas = ctx.alphas
    sigmas = ctx.grid.sigmas.tolist()

    x = ctx.start()  # [B, C, h, w]: the VP-frame state x_t at the grid's first level
    for i in range(len(ctx)):  # x: [B, C, h, w] at level i -> at level i + 1
        _, eps = ctx.predict(x, i)
        x_ve = x / alphas[i]
        dt = sigmas[i + 1] - sigmas[i]
        x_next = x_ve + dt * eps  # Euler step (Karras et al. 2022, Alg. 1, line 5)
        if heun and sigmas[i + 1] > 0:
            # Heun's correction (Alg. 1, lines 7-8): average the slopes at both ends. Inpainting
            # blends the known region in first, so the second slope is taken where the network
            # sees the start image (as diffusers' inpainting loop does with its Heun scheduler).
            _, eps_next = ctx.predict(ctx.blend(alphas[i + 1] * x_next, i + 1), i + 1)
            x_next = x_ve + dt * 0.5 * (eps + eps_next)
        x = ctx.end_step(i, alphas[i + 1] * x_next)
    return x


def euler(
    denoiser: Denoiser,
    x_T: Tensor | None,
    schedule: NoiseSchedule,
    *,
    steps: int = 50,
    prediction: str = "eps",
    noise: SeededNoise | None = None,
    callback: Callback | None = None,
    spacing: str = "linspace",
    steps_offset: int = 0,
    karras_sigmas: bool = False,
    init: Tensor | None = None,
    strength: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Deterministic Euler sampler (one network call per step)."""
    return _run(False, denoiser, x_T, schedule, steps, prediction, noise, callback,
                spacing, steps_offset, karras_sigmas, init, strength, mask)


def heun(
    denoiser: Denoiser,
    x_T: Tensor | None,
    schedule: NoiseSchedule,
    *,
    steps: int = 25,
    prediction: str = "eps",
    noise: SeededNoise | None = None,
    callback: Callback | None = None,
    spacing: str = "linspace",
    steps_offset: int = 0,
    karras_sigmas: bool = False,
    init: Tensor | None = None,
    strength: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Heun's second-order sampler (2 * steps - 1 network calls).

    Its trapezoid assumes steps short against the noise level (Karras et al. 2022 start at
    sigma = 80). A first step from a far higher level (the cosine schedule's sigma_max = 2e4, or
    any schedule under ~10 steps) multiplies the second slope's error by sigma_i / sigma_{i+1}:
    with an exact denoiser of a Gaussian, the cosine schedule's 25 steps give a spread 45% too
    wide. diffusers' HeunDiscreteScheduler does the same, and ldmkit keeps its steps; `dpmpp_2m`,
    which steps in log-sigma, has no such limit.
    """
    return _run(True, denoiser, x_T, schedule, steps, prediction, noise, callback,
                spacing, steps_offset, karras_sigmas, init, strength, mask)
