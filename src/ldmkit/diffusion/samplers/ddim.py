"""DDIM sampling (Song et al. 2021), deterministic at eta = 0, DDPM-like at eta = 1.

x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - s^2) eps_hat + s z        (Song et al. 2021, eq. 12)
s = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)               (Song et al. 2021, eq. 16)
"""

from __future__ import annotations

from torch import Tensor

from ldmkit.diffusion.noise import SeededNoise
from ldmkit.diffusion.samplers.context import Callback, Denoiser, SamplingContext
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.diffusion.timesteps import check_steps, grid_from_timesteps, spaced_timesteps
from ldmkit.errors import UserError


def ddim(
    denoiser: Denoiser,
    x_T: Tensor | None,
    schedule: NoiseSchedule,
    *,
    steps: int = 50,
    prediction: str = "eps",
    noise: SeededNoise | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
    spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    init: Tensor | None = None,
    strength: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """DDIM with diffusers' DDIMScheduler defaults: "leading" spacing, steps_offset 0, and a
    last step to alpha_bar = 1 (`set_alpha_to_one`; else to alpha_bar_0).

    Each step lands on the next level of the grid (eq. 12 between consecutive levels).
    diffusers' DDIMScheduler lands on t - T // steps instead, the same level only for "leading"
    spacing or a step count that divides T: with "linspace", or "trailing" at other counts, the
    two differ (SD's schedule, 50 linspace steps: final samples by ~2e-2).
    """
    check_steps(steps, schedule)
    if not 0 <= eta <= 1:
        raise UserError(f"eta must be in [0, 1], got {eta!r}")
    t = spaced_timesteps(schedule.num_steps, steps, spacing, offset=steps_offset)
    final = 1.0 if set_alpha_to_one else float(schedule.alphas_cumprod[0])
    ctx = SamplingContext(
        denoiser, x_T, schedule, grid_from_timesteps(schedule, t, final), prediction=prediction,
        noise=noise, callback=callback, init=init, strength=strength, mask=mask,
    )
    a = ctx.grid.alphas_cumprod
    a_t, a_prev = a[:-1], a[1:]
    s = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
    coef_x0 = a_prev.sqrt().tolist()
    coef_eps = (1 - a_prev - s**2).clamp(min=0).sqrt().tolist()
    std = s.tolist()

    x = ctx.start()  # [B, C, h, w]: the VP-frame state x_t at the grid's first level
    for i in range(len(ctx)):  # x: [B, C, h, w] at level i -> at level i + 1
        x0, eps = ctx.predict(x, i)
        x = coef_x0[i] * x0 + coef_eps[i] * eps
        if std[i] > 0:
            x = x + std[i] * ctx.randn(x)
        x = ctx.end_step(i, x)
    return x
