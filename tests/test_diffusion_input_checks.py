"""Mistaken arguments to the diffusion package's public functions: one UserError naming the argument,
not a bare StopIteration, a broadcast that returns a plausible number, or torch's error from inside."""

import pytest
import torch

from ldmkit.diffusion import NoiseSchedule
from ldmkit.diffusion.samplers import sample
from ldmkit.diffusion.timesteps import spaced_timesteps
from ldmkit.errors import UserError


def _zeros(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize("offset", [1000, 2000, -5])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_steps_offset_outside_the_schedule_is_named(offset, spacing):
    # 2000 was a bare StopIteration (a RuntimeError through a generator), -5 blamed the step count.
    with pytest.raises(UserError, match=rf"steps_offset must be an integer from 0 to 999.*got {offset}"):
        sample(_zeros, torch.zeros(1, 2), NoiseSchedule.create(), sampler="ddim", steps=4, spacing=spacing,
               steps_offset=offset)


def test_steps_offset_that_leaves_no_step_count_is_named():
    # DPM-Solver's extra point: from offset 500 of 1000 no count of 2 or more starts inside the schedule.
    with pytest.raises(UserError, match="steps_offset 600 puts 'leading' spacing's first step past"):
        sample(_zeros, torch.zeros(1, 2), NoiseSchedule.create(), sampler="dpmpp-2m", steps=4, spacing="leading",
               steps_offset=600)


def test_steps_offset_checks_keep_the_step_count_error():
    assert spaced_timesteps(1000, 4, "leading", offset=999 - 750).tolist() == [999, 749, 499, 249]
    with pytest.raises(UserError, match="use 500 steps"):  # a real step-count problem keeps its advice
        spaced_timesteps(1000, 600, "leading")
    with pytest.raises(UserError, match="start at t = 1749 of 0..999, past the last timestep"):
        spaced_timesteps(1000, 4, "leading", offset=999)
