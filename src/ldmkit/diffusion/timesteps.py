"""Which noise levels a sampler visits: timestep spacings, Karras sigmas and the step grid.

A sampler walks a `StepGrid`: n levels at which the network is called (timesteps t_0 > ... >
t_{n-1}) plus one final level the last step lands on (usually clean, alpha_bar = 1). Levels are
stored as alpha_bar in float64 on the CPU; every per-step coefficient is derived from them
before the sampling loop starts, so the loop never reads a number back from the device.

Spacings follow the names of Lin et al. 2024, Table 2, and diffusers' `timestep_spacing`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

import torch
from torch import Tensor

from ldmkit.diffusion.schedules import NoiseSchedule, ve_sigma
from ldmkit.errors import UserError

SPACINGS = ("leading", "linspace", "trailing")


def check_steps(steps: int, schedule: NoiseSchedule) -> int:
    """Validate a user step count: an integer in [1, T]."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= schedule.num_steps:
        raise UserError(f"steps must be an integer from 1 to {schedule.num_steps}, got {steps!r}")
    return steps


def spaced_timesteps(
    num_train_steps: int,
    steps: int,
    spacing: str,
    *,
    offset: int = 0,
    skip_zero: bool = False,
    fractional: bool = False,
) -> Tensor:
    """`steps` descending timesteps in [0, T), float64.

    leading:  k * (T // n) + offset for k = n-1..0         (DDPM/DDIM papers, SD 1.x)
    linspace: linspace(0, T - 1, n), rounded unless `fractional`
    trailing: round(T - k T / n) - 1 for k = 0..n-1         (always starts at T - 1)

    `skip_zero` places n + 1 points and drops the smallest (DPM-Solver's convention: its last
    step goes from a level above t = 0 straight to sigma = 0); at n = T no point is left to
    skip, and the grid is every timestep.

    One step is at t = T - 1 whatever the spacing: linspace's single point and leading's first
    stride are t = 0, where a sampler called once returns its start noise.

    `offset` (the samplers' `steps_offset`, diffusers' name) shifts only 'leading' grids, but is
    checked for every spacing: an offset outside [0, T) is a mistake whichever grid it meets.
    """
    if spacing not in SPACINGS:
        raise UserError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    T = num_train_steps
    # Checked here, not left to the grid's checks: 2000 ran out of step counts to suggest (a bare
    # StopIteration) and -5 was told to use fewer steps, when the offset was what was wrong.
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or not 0 <= offset < T:
        raise UserError(f"steps_offset must be an integer from 0 to {T - 1} (the schedule's last timestep), "
                        f"got {offset!r}")
    if steps == 1 or (skip_zero and steps == T and spacing != "trailing"):
        return torch.arange(T - 1, T - 1 - steps, -1, dtype=torch.float64)
    points = steps + int(skip_zero)
    if spacing == "linspace":
        # numpy's linspace and arange, not torch's: at exact halves (n = 30 gives 499.5) they round
        # the other way, and the grid would be one timestep off diffusers' (17 of 199 counts at T = 1000).
        t = torch.from_numpy(np.linspace(0, T - 1, points))
        if not fractional:
            t = t.round()
        t = t.flip(0)
    elif spacing == "leading":
        ratio = T // points
        if ratio < 1:
            raise UserError(f"{steps} steps do not fit 'leading' spacing over {T} timesteps")
        if not _leading_reaches_the_top(T, points, offset):
            # Whole strides from t = 0 leave the top of the schedule unvisited: 600 steps start at
            # t = 599, with a quarter of the signal left in what the sampler takes for pure noise.
            fits = (n for n in range(steps - 1, 0, -1) if _leading_reaches_the_top(T, n + points - steps, offset))
            fewer = next(fits, None)
            first = (points - 1) * ratio + offset
            if fewer is None:  # skip_zero's extra point: from offset T // 2 on, no count of two or more fits
                raise UserError(
                    f"steps_offset {offset} puts 'leading' spacing's first step past the last timestep ({T - 1}) "
                    f"for {steps} steps and every count down to 2; use a smaller steps_offset (diffusers' models "
                    f"use 0 or 1), or from Python spacing='trailing'"
                )
            where = "past the last timestep" if first > T - 1 else "far from pure noise"
            raise UserError(
                f"{steps} steps with 'leading' spacing (this model's) take strides of {ratio} timestep(s) from "
                f"t = {offset} and start at t = {first} of 0..{T - 1}, {where}; use {fewer} steps (the most "
                f"below {steps} that start near t = {T - 1}), or from Python spacing='trailing'"
            )
        t = (torch.arange(points, dtype=torch.float64) * ratio).flip(0) + offset
    else:  # trailing
        t = torch.from_numpy(np.arange(T, 0, -T / steps)[:steps]).round() - 1  # diffusers' arange may hold n + 1
    if skip_zero and spacing != "trailing":
        t = t[:-1]
    if not bool((t[:-1] > t[1:]).all()) or float(t.min()) < 0 or float(t.max()) > T - 1:
        raise UserError(
            f"{steps} steps with {spacing!r} spacing give repeated or out-of-range timesteps "
            f"over {T} training steps; use fewer steps or another spacing"
        )
    return t


def _leading_reaches_the_top(T: int, points: int, offset: int) -> bool:
    """Whether `points` leading strides of T // points from t = offset cover at least 90% of the
    schedule (every count up to T / 10 does) and stay inside it."""
    ratio = T // points
    return ratio >= 1 and points * ratio + offset >= 0.9 * T and (points - 1) * ratio + offset <= T - 1


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) -
    s_max^(1/rho)))^rho, i = 0..n-1; rho = 7 spends more steps at low noise."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


@dataclass(frozen=True)
class StepGrid:
    """The levels of one sampling run.

    timesteps: float64 [n], the network's t at levels 0..n-1.
    alphas_cumprod: float64 [n + 1], alpha_bar at each level; entry n is where the last step
        lands (1.0 = clean).
    """

    timesteps: Tensor
    alphas_cumprod: Tensor

    def __post_init__(self) -> None:
        if self.alphas_cumprod.numel() != self.timesteps.numel() + 1:
            raise ValueError("a StepGrid needs one more level than timesteps")

    def __len__(self) -> int:
        return self.timesteps.numel()

    def tail(self, n: int) -> "StepGrid":
        """The last `n` steps (img2img starts part-way down the grid)."""
        first = len(self) - n
        return StepGrid(self.timesteps[first:], self.alphas_cumprod[first:])

    @property
    def alphas(self) -> Tensor:
        """sqrt(alpha_bar): the signal coefficient of x_t."""
        return self.alphas_cumprod.sqrt()

    @property
    def sigmas_vp(self) -> Tensor:
        """sqrt(1 - alpha_bar): the noise coefficient of x_t."""
        return (1 - self.alphas_cumprod).sqrt()

    @property
    def sigmas(self) -> Tensor:
        """VE sigma = sqrt((1 - a) / a) (inf where alpha_bar = 0, 0 where it is 1)."""
        return ve_sigma(self.alphas_cumprod)


def grid_from_timesteps(schedule: NoiseSchedule, t: Tensor, final_alpha_bar: float = 1.0) -> StepGrid:
    """Grid visiting timesteps `t`, then landing on `final_alpha_bar`."""
    levels = torch.cat([schedule.alpha_bar_at(t), torch.tensor([final_alpha_bar], dtype=torch.float64)])
    return StepGrid(t, levels)


def grid_from_sigmas(schedule: NoiseSchedule, sigmas: Tensor) -> StepGrid:
    """Grid visiting VE `sigmas` (network told the matching fractional t), then sigma = 0."""
    t = schedule.timestep_at(sigmas)
    levels = torch.cat([1 / (1 + sigmas**2), torch.ones(1, dtype=torch.float64)])
    return StepGrid(t, levels)


def sigma_range(schedule: NoiseSchedule) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the schedule, a zero alpha_bar taken as the schedule's
    `alpha_bar_floor` so a zero-terminal-SNR schedule still has a finite largest sigma."""
    sigmas = ve_sigma(schedule.finite_alphas_cumprod())
    return float(sigmas[0]), float(sigmas[-1])


def finite_grid(grid: StepGrid, schedule: NoiseSchedule) -> StepGrid:
    """The grid with a network level at alpha_bar = 0 moved to the schedule's `alpha_bar_floor`
    (for sigma-space samplers, whose x / sqrt(alpha_bar) would be infinite there)."""
    a = grid.alphas_cumprod.clone()
    a[:-1] = torch.where(a[:-1] > 0, a[:-1], torch.full_like(a[:-1], schedule.alpha_bar_floor))
    return StepGrid(grid.timesteps, a)


def karras_grid(schedule: NoiseSchedule, steps: int, rho: float = 7.0) -> StepGrid:
    """`steps` Karras sigmas (eq. 5) spanning the schedule's sigma range, then sigma = 0.

    Spacing and steps offset do not apply: the range is always the schedule's whole one, as in
    diffusers' DPMSolverMultistepScheduler. Its Euler / Heun schedulers take the range from the
    spaced timesteps instead (SD's "leading" spacing with offset 1, 10 steps: sigma 0.041-8.39
    there, 0.029-14.6 here).
    """
    sigma_min, sigma_max = sigma_range(schedule)
    return grid_from_sigmas(schedule, karras_sigmas(sigma_min, sigma_max, steps, rho))
