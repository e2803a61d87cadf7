"""DPM-Solver++(2M): second-order multistep solver of the diffusion ODE in data (x_0)
prediction form (Lu et al. 2022, "DPM-Solver++", Alg. 2).

With lambda = log(alpha / sigma) (half the log-SNR) and h_i = lambda_{i+1} - lambda_i,
  x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h_i) - 1) D_i,
  D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1},  r_i = h_{i-1} / h_i,
and D_0 = x0_0 (first order) for the first step. The last step lands on sigma = 0, where
h = inf; it is taken at first order (diffusers' lower_order_final / final_sigmas_type="zero"),
which there reduces to x = x0_hat.
"""

from __future__ import annotations

import math

from torch import Tensor

from ldmkit.diffusion.noise import SeededNoise
from ldmkit.diffusion.samplers.context import Callback, Denoiser, SamplingContext
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.diffusion.timesteps import (
    StepGrid,
    check_steps,
    grid_from_timesteps,
    karras_grid,
    spaced_timesteps,
)


def _multistep_coefficients(grid: StepGrid) -> tuple[list[float], list[float], list[float]]:
    """Per step i: sigma_{i+1}/sigma_i, -alpha_{i+1} (exp(-h_i) - 1), and 1/(2 r_i) (0 for a
    first-order step), all as Python floats computed once before the loop."""
    alphas, sigmas = grid.alphas, grid.sigmas_vp
    # log(0) = -inf at the clean end (sigma = 0) and at zero terminal SNR (alpha = 0); the
    # float arithmetic below keeps those infinities where they belong (exp(-inf) = 0).
    lam = (alphas.log() - sigmas.log()).tolist()
    alphas, sigmas = alphas.tolist(), sigmas.tolist()
    ratio, gain, mix = [], [], []
    for i in range(len(grid)):
        h = lam[i + 1] - lam[i]
        ratio.append(sigmas[i + 1] / sigmas[i])
        gain.append(-alphas[i + 1] * math.expm1(-h))
        # Second order needs a previous x0 and a finite step: the first step and the last
        # one, to sigma = 0 (h = inf), are first order. After an infinite step (leaving zero
        # SNR) r = inf, so the correction 1/(2r) is 0 by itself.
        first_order = i == 0 or math.isinf(h)
        mix.append(0.0 if first_order else 0.5 * h / (lam[i] - lam[i - 1]))
    return ratio, gain, mix


def dpmpp_2m(
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
    """DPM-Solver++(2M) with diffusers' DPMSolverMultistepScheduler defaults: "linspace"
    spacing over n + 1 points without t = 0, final sigma 0, first-order last step.

    `karras_sigmas=True` visits Karras et al. 2022 (eq. 5) sigmas instead, the network being
    told the fractional t of each sigma.
    """
    check_steps(steps, schedule)
    grid = _dpm_grid(schedule, steps, spacing, steps_offset, karras_sigmas)
    ctx = SamplingContext(
        denoiser, x_T, schedule, grid, prediction=prediction,
        noise=noise, callback=callback, init=init, strength=strength, mask=mask,
    )
    ratio, gain, mix = _multistep_coefficients(ctx.grid)

    x = ctx.start()  # [B, C, h, w]: the VP-frame state x_t at the grid's first level
    x0_prev = None
    for i in range(len(ctx)):  # x: [B, C, h, w] at level i -> at level i + 1
        x0, _ = ctx.predict(x, i)
        d = x0 if mix[i] == 0 else (1 + mix[i]) * x0 - mix[i] * x0_prev
        x = ratio[i] * x + gain[i] * d
        x0_prev = x0
        x = ctx.end_step(i, x)
    return x


def _dpm_grid(schedule: NoiseSchedule, steps: int, spacing: str, offset: int, karras: bool) -> StepGrid:
    """The DPM-Solver levels: Karras sigmas, or spaced timesteps that skip t = 0; then sigma 0."""
    if karras:
        return karras_grid(schedule, steps)
    t = spaced_timesteps(schedule.num_steps, steps, spacing, offset=offset, skip_zero=True)
    return grid_from_timesteps(schedule, t, 1.0)
