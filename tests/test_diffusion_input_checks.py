"""Mistaken arguments to the diffusion package's public functions: one UserError naming the argument,
not a bare StopIteration, a broadcast that returns a plausible number, or torch's error from inside."""

import numpy as np
import pytest
import torch

from ldmkit.diffusion import NoiseSchedule, class_guidance, classifier_free_guidance, diffusion_loss
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


@pytest.mark.parametrize(("argument", "value", "message"), [
    ("noise", torch.randn(1, 4, 5, 3), r"noise must be a tensor of x0's shape \(4, 4, 5, 3\), got \(1, 4, 5, 3\)"),
    ("t", torch.tensor([1, 2, 3]), r"t must be a tensor of timesteps of shape \[4\] \(x0's batch\), got torch.int64"),
    ("t", torch.tensor([[1], [2], [3], [4]]), r"t must be a tensor of timesteps of shape \[4\]"),
    ("t", [1, 2, 3, 4], r"t must be a tensor of timesteps of shape \[4\] \(x0's batch\), got list"),
    ("x0", torch.zeros(4, 4, 5, 3, dtype=torch.long), r"x0 must be a floating-point tensor \[B, .*\], got torch.int"),
    ("x0", torch.zeros(4), r"x0 must be a floating-point tensor \[B, \.\.\.\], got torch.float32 \(4,\)"),
])
def test_diffusion_loss_refuses_mistaken_inputs(argument, value, message):
    # The [1, ...] noise broadcast into a plausible loss (0.96); the others failed inside torch.
    inputs = {"x0": torch.randn(4, 4, 5, 3), argument: value}
    with pytest.raises(UserError, match=message):
        diffusion_loss(_zeros, schedule=NoiseSchedule.create(), **inputs)


def test_diffusion_loss_takes_fractional_and_out_of_range_t_as_before():
    # Documented, not checked (a check would read the values back every step): float t is
    # interpolated and values outside [0, T - 1] are clamped.
    s, x0, noise = NoiseSchedule.create(), torch.randn(3, 2), torch.randn(3, 2)
    clamped = diffusion_loss(_zeros, x0, s, t=torch.tensor([1000, -3, 5]), noise=noise, return_per_sample=True)[1]
    edges = diffusion_loss(_zeros, x0, s, t=torch.tensor([999, 0, 5]), noise=noise, return_per_sample=True)[1]
    assert torch.equal(clamped, edges)
    assert torch.isfinite(diffusion_loss(_zeros, x0, s, t=torch.tensor([0.5, 10.25, 999.0]), noise=noise))


def _conditioned(x, t, c=None):
    return x * c.view(-1, 1)


@pytest.mark.parametrize("scale", [None, float("nan"), float("inf"), "7.5", True, torch.tensor([1.0, 2.0])])
def test_guidance_scale_must_be_a_finite_number(scale):
    # None failed at the first step ("unsupported operand type(s) for *"), NaN returned NaN.
    with pytest.raises(UserError, match="guidance scale must be a finite number"):
        classifier_free_guidance(_conditioned, scale, cond={"c": torch.ones(2)}, uncond={"c": torch.zeros(2)})
    with pytest.raises(UserError, match="guidance scale must be a finite number"):
        class_guidance(_conditioned, torch.tensor([1, 2]), 9, scale)


@pytest.mark.parametrize("scale", [2, 2.0, np.float32(2.0), np.int64(2), torch.tensor(2.0), -1.5])
def test_guidance_scale_numbers_still_guide(scale):
    guided = classifier_free_guidance(_conditioned, scale, cond={"c": torch.ones(2)}, uncond={"c": torch.zeros(2)})
    x = torch.ones(2, 3)
    assert torch.equal(guided(x, torch.zeros(2)), float(scale) * x)


@pytest.mark.parametrize(("sampler", "option"), [("euler", "karras_sigmas"), ("dpmpp-2m", "karras_sigmas"),
                                                 ("ddim", "set_alpha_to_one")])
def test_numpy_bools_are_bool_options(sampler, option):
    # np.bool_ was refused with "must be a bool", while numpy's ints and floats were taken for the
    # int and float options; tensors are taken for none of them.
    s, x = NoiseSchedule.create(), torch.randn(2, 3)

    def model(x_t, t):
        return 0.1 * x_t

    for flag in (True, False):
        ours = sample(model, x, s, sampler=sampler, steps=4, **{option: np.bool_(flag)})
        assert torch.equal(ours, sample(model, x, s, sampler=sampler, steps=4, **{option: flag}))
    for wrong in (torch.tensor(True), np.int64(1), "yes"):
        with pytest.raises(UserError, match=f"{option} must be a bool"):
            sample(model, x, s, sampler=sampler, steps=4, **{option: wrong})
