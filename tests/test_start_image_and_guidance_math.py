"""img2img, inpainting and classifier-free guidance against closed forms of Gaussian data, and
against diffusers' own loops where they define the convention.

For data N(mu, s^2) per coordinate the exact denoiser is linear in mu (tests/test_samplers.py), so:
- guidance u + w (c - u) of two such models with the same s is exactly the denoiser of
  N(mu_u + w (mu_c - mu_u), s^2) (Ho & Salimans 2022, eq. 6, with w = 1 + their w);
- the probability-flow ODE from a level a0 is the affine map
  x0 = mu + s (x_t - sqrt(a0) mu) / sqrt(a0 s^2 + 1 - a0), whatever x_t is (img2img's start);
- pixels are independent, so inpainting's masked part is sampled as without a mask.
"""

import math

import pytest
import torch

from ldmkit.diffusion import NoiseSchedule, SeededNoise, class_guidance, sample
from ldmkit.diffusion.timesteps import spaced_timesteps
from ldmkit.errors import UserError

MU, S = 0.7, 0.4
LINEAR = NoiseSchedule.create("linear")
SD = NoiseSchedule.create("scaled_linear")
ODE_SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m")


def exact_prediction(x, a, mu, prediction):
    """eps / v / x0 prediction of N(mu, S^2) data at alpha_bar `a` (broadcast against x)."""
    x0 = mu + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * mu)
    eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]


def gaussian_denoiser(mu=MU, prediction="eps", schedule=LINEAR, calls=None):
    def denoiser(x, t):
        if calls is not None:
            calls.append((x.clone(), t.clone()))
        a = schedule.alpha_bar_at(t.double()).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        return exact_prediction(x, a, mu, prediction)

    return denoiser


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_guidance_samples_the_shifted_gaussian(prediction):
    means = torch.tensor([0.9, -0.5, 0.2], dtype=torch.float64)  # class 0, class 1, the null class

    def model(x, t, class_labels):
        a = LINEAR.alpha_bar_at(t.double()).view(-1, 1)
        return exact_prediction(x, a, means[class_labels].view(-1, 1), prediction)

    x_T = torch.randn(2, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shifted = (means[2] + 3.0 * (means[:2] - means[2])).view(-1, 1)
    for name in ODE_SAMPLERS:
        guided = sample(class_guidance(model, torch.tensor([0, 1]), 2, 3.0), x_T, LINEAR, sampler=name, steps=10,
                        prediction=prediction)
        exact = sample(gaussian_denoiser(shifted, prediction), x_T, LINEAR, sampler=name, steps=10,
                       prediction=prediction)
        torch.testing.assert_close(guided, exact, rtol=0, atol=1e-10)


def test_guidance_rescale_is_diffusers_rescale_noise_cfg():
    pytest.importorskip("diffusers")
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    from ldmkit.diffusion.guidance import rescale_guidance

    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    guided = uncond + 5 * (cond - uncond)
    for phi in (0.3, 0.7, 1.0):
        torch.testing.assert_close(rescale_guidance(guided, cond, phi), rescale_noise_cfg(guided, cond, phi))


def test_img2img_runs_diffusers_steps_from_diffusers_start():
    """SD's schedule, strength 0.5 of 25 steps: the same start level, steps and result as
    diffusers' img2img loop (add_noise at the first kept timestep, then scheduler.step)."""
    diffusers = pytest.importorskip("diffusers")
    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    schedulers = {"ddim": lambda: diffusers.DDIMScheduler(**config, clip_sample=False),
                  "euler": lambda: diffusers.EulerDiscreteScheduler(**config),
                  "heun": lambda: diffusers.HeunDiscreteScheduler(**config),
                  "dpmpp-2m": lambda: diffusers.DPMSolverMultistepScheduler(**config)}
    init = torch.full((2, 16), 1.5, dtype=torch.float64)
    noise = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, make in schedulers.items():
        ours = sample(gaussian_denoiser(schedule=SD), noise, SD, sampler=name, steps=25, init=init, strength=0.5)
        scheduler = make()
        scheduler.set_timesteps(25)
        skipped = (25 - int(25 * 0.5)) * scheduler.order
        timesteps = scheduler.timesteps[skipped:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skipped)
        latents = scheduler.add_noise(init, noise, timesteps[:1])
        for t in timesteps:
            prediction = gaussian_denoiser(schedule=SD)(scheduler.scale_model_input(latents, t),
                                                        t.reshape(1).double().expand(2))
            latents = scheduler.step(prediction, t, latents).prev_sample
        torch.testing.assert_close(ours, latents, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m"])
def test_img2img_follows_the_exact_flow_from_its_start(name):
    """From wherever img2img starts (init noised to the first kept level), an ODE sampler with
    many steps lands on the exact flow map of that start, not on a fresh sample."""
    calls = []
    init = torch.tensor([[-1.0, 0.0, 2.0, 3.0]], dtype=torch.float64)
    x_T = torch.randn(1, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample(gaussian_denoiser(calls=calls), x_T, LINEAR, sampler=name, steps=400, init=init, strength=0.3,
                 spacing="trailing")
    x_start, t_start = calls[0]
    a0 = float(LINEAR.alpha_bar_at(t_start[0].double()))
    torch.testing.assert_close(x_start, math.sqrt(a0) * init + math.sqrt(1 - a0) * x_T)
    exact = MU + S * (x_start - math.sqrt(a0) * MU) / math.sqrt(a0 * S**2 + 1 - a0)
    torch.testing.assert_close(out, exact, rtol=0, atol=5e-3)


@pytest.mark.parametrize("name,steps", [("ddim", 10), ("euler", 10), ("heun", 10), ("dpmpp-2m", 10), ("ddpm", 50)])
def test_every_network_call_sees_the_kept_region_at_its_own_level(name, steps):
    """Outside the mask the network is always shown the start image noised to the level it is
    told, Heun's second slope included (it was taken on the unblended Euler end point)."""
    init = torch.full((2, 1, 4, 4), 2.0, dtype=torch.float64)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1
    keep = mask.expand_as(init) == 0
    calls = []
    noise = SeededNoise([0, 1], (1, 4, 4), dtype=torch.float64)
    x_T = noise.draw()
    out = sample(gaussian_denoiser(schedule=SD, calls=calls), x_T, SD, sampler=name, steps=steps, noise=noise,
                 init=init, mask=mask, strength=0.6)
    assert torch.equal(out[keep], init[keep])
    for x, t in calls:
        a = SD.alpha_bar_at(t[0].double())
        torch.testing.assert_close(x[keep], a.sqrt() * init[keep] + (1 - a).sqrt() * x_T[keep], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "heun"])
def test_inpainting_at_strength_one_starts_the_masked_part_from_noise(name):
    """As plain generation and diffusers' inpainting do: SD's top level keeps sqrt(alpha_bar) =
    0.07 of the start image, which leaked into the redrawn part."""
    init = torch.full((1, 1, 4, 4), 3.0, dtype=torch.float64)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1
    x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls = []
    out = sample(gaussian_denoiser(schedule=SD, calls=calls), x_T, SD, sampler=name, steps=10, init=init, mask=mask)
    assert torch.equal(calls[0][0][..., :2], x_T[..., :2])
    unmasked = sample(gaussian_denoiser(schedule=SD), x_T, SD, sampler=name, steps=10)
    torch.testing.assert_close(out[..., :2], unmasked[..., :2], rtol=0, atol=1e-12)  # pixels are independent


def test_same_seed_same_start_image_result_at_any_batch_position():
    init = torch.full((1, 2, 4, 4), 1.5)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    for name in ("ddpm", "ddim", "dpmpp-2m", "euler", "heun"):
        for masking in ({}, {"mask": mask}):
            alone = sample(gaussian_denoiser(), None, LINEAR, sampler=name, steps=10,
                           noise=SeededNoise([7], (2, 4, 4)), init=init, strength=0.6, **masking)
            third = sample(gaussian_denoiser(), None, LINEAR, sampler=name, steps=10,
                           noise=SeededNoise([1, 2, 7], (2, 4, 4)), init=init.expand(3, -1, -1, -1), strength=0.6,
                           **masking)
            assert torch.equal(third[2], alone[0]), name


def test_a_mask_wider_than_the_sample_is_refused():
    """It broadcast, and the samples came back with the mask's extra dimension."""
    x_T = torch.randn(2, 4, 8, 8)
    for name in ("ddim", "euler"):
        with pytest.raises(UserError, match=r"mask shape \(1, 2, 4, 8, 8\) does not broadcast to \(2, 4, 8, 8\)"):
            sample(gaussian_denoiser(), x_T, LINEAR, sampler=name, steps=4, init=torch.zeros_like(x_T),
                   mask=torch.ones(1, 2, 4, 8, 8))


def test_a_strength_that_runs_no_step_returns_the_start_image_where_the_grid_ends_noisy():
    """DDIM with set_alpha_to_one=False (SD's config) ends at alpha_bar(t=0) < 1: with no step to
    run, the start noised there came back instead of the start."""
    init = torch.randn(1, 4, 4, 4)
    out = sample(gaussian_denoiser(schedule=SD), torch.randn(1, 4, 4, 4), SD, sampler="ddim", steps=10, init=init,
                 strength=0.0, set_alpha_to_one=False)
    assert torch.equal(out, init)


@pytest.mark.parametrize("spacing,skip_zero,steps", [("linspace", True, 30), ("linspace", False, 26),
                                                     ("linspace", True, 92), ("trailing", False, 48)])
def test_step_grids_are_diffusers_at_rounding_ties(spacing, skip_zero, steps):
    """torch.linspace / arange round the other way from numpy at exact halves: n = 30 gave
    t = 500 where diffusers takes 499."""
    diffusers = pytest.importorskip("diffusers")
    if skip_zero:
        scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    else:
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    ours = spaced_timesteps(1000, steps, spacing, skip_zero=skip_zero)
    assert ours.long().tolist() == scheduler.timesteps.tolist()
