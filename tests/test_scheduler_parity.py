"""Trajectories agree with diffusers' schedulers for the same noise and the same denoiser.

diffusers keeps its tables in float32; ours are float64, so agreement is to ~1e-5, checked at
1e-4 max abs difference after a whole run. Configs are diffusers' defaults except clip_sample
(False, as Stable Diffusion sets it: latents are not clipped).
"""

import pytest
import torch

from ldmkit.diffusion import NoiseSchedule, SeededNoise, sample

diffusers = pytest.importorskip("diffusers")
# diffusers' own numpy-2 deprecation noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BETAS = {
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def make_denoiser(schedule, prediction, t_dependent=True):
    """A fixed smooth function of (x, t): the exact denoiser of N(0.3, 0.5^2) data (affine in x,
    O(1) outputs at every noise level), written for a scalar or [B] t."""

    def denoiser(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        if not t_dependent:
            t = torch.full_like(t, 500.0)
        a = schedule.alpha_bar_at(t).view(-1, *[1] * (x.dim() - 1))
        xd = x.double()
        x0 = 0.3 + a.sqrt() * 0.25 / (a * 0.25 + 1 - a) * (xd - a.sqrt() * 0.3)
        eps = (xd - a.sqrt() * x0) / (1 - a).sqrt()
        out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
        return out.to(x.dtype)

    return denoiser


def start_noise():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def run_diffusers(scheduler, denoiser, x_T, steps, variance_noise=None, eta=None):
    """diffusers' denoising loop, started from the same state as ours: x_T is the VP sample at
    the first level, i.e. x_T * sqrt(sigma^2 + 1) in sigma space. (diffusers' Euler/Heun
    init_noise_sigma is sigma_max alone for "linspace"/"trailing", which assumes zero data
    variance; ours is exact for unit-variance latents and the same for every sampler.)"""
    scheduler.set_timesteps(steps)
    if isinstance(scheduler, (diffusers.EulerDiscreteScheduler, diffusers.HeunDiscreteScheduler)):
        x = x_T * (scheduler.sigmas.max() ** 2 + 1) ** 0.5
    else:
        x = x_T * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        out = denoiser(scheduler.scale_model_input(x, t), t)
        kwargs = {}
        if eta is not None:
            kwargs = dict(eta=eta, variance_noise=variance_noise[i])
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


@pytest.mark.parametrize("betas", list(BETAS))
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_matches_diffusers(betas, prediction):
    schedule = NoiseSchedule.create(betas)
    den = make_denoiser(schedule, prediction)
    ref = diffusers.DDIMScheduler(
        **BETAS[betas], clip_sample=False, prediction_type=DIFFUSERS_PREDICTION[prediction]
    )
    x_T = start_noise()
    ours = sample(den, x_T, schedule, sampler="ddim", steps=10, prediction=prediction)
    theirs = run_diffusers(ref, den, x_T, 10)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_ddim_eta_matches_diffusers_with_the_same_noise():
    schedule = NoiseSchedule.create("scaled_linear")
    den = make_denoiser(schedule, "eps")
    ref = diffusers.DDIMScheduler(**BETAS["scaled_linear"], clip_sample=False)
    x_T = start_noise()
    ours = sample(den, x_T, schedule, sampler="ddim", steps=10, eta=0.6, noise=SeededNoise([1, 2], (4, 8, 8)))
    # Our sampler draws once per step with nonzero variance: every step but the last.
    stream = SeededNoise([1, 2], (4, 8, 8))
    draws = [stream.draw() for _ in range(9)] + [torch.zeros_like(x_T)]
    theirs = run_diffusers(ref, den, x_T, 10, variance_noise=draws, eta=0.6)
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("betas", list(BETAS))
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_dpmpp_2m_matches_diffusers(betas, prediction):
    schedule = NoiseSchedule.create(betas)
    den = make_denoiser(schedule, prediction)
    ref = diffusers.DPMSolverMultistepScheduler(
        **BETAS[betas], prediction_type=DIFFUSERS_PREDICTION[prediction]
    )
    x_T = start_noise()
    for steps in (10, 20):  # < 15 and >= 15 steps take different lower-order rules in diffusers
        ours = sample(den, x_T, schedule, sampler="dpmpp-2m", steps=steps, prediction=prediction)
        theirs = run_diffusers(ref, den, x_T, steps)
        assert (ours - theirs).abs().max().item() < 1e-4, steps


def test_dpmpp_2m_karras_sigmas_match_diffusers():
    # diffusers rounds Karras timesteps to integers where we pass the exact fractional t,
    # so this denoiser ignores t: what is compared is the sigma sequence and the solver.
    schedule = NoiseSchedule.create("scaled_linear")
    den = make_denoiser(schedule, "eps", t_dependent=False)
    ref = diffusers.DPMSolverMultistepScheduler(**BETAS["scaled_linear"], use_karras_sigmas=True)
    x_T = start_noise()
    ours = sample(den, x_T, schedule, sampler="dpmpp-2m", steps=10, karras_sigmas=True)
    theirs = run_diffusers(ref, den, x_T, 10)
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("betas", list(BETAS))
@pytest.mark.parametrize("steps,karras", [(10, False), (7, False), (10, True)])
def test_euler_matches_diffusers(betas, steps, karras):
    # 7 steps put the linspace timesteps between integers (fractional t, interpolated sigma).
    schedule = NoiseSchedule.create(betas)
    den = make_denoiser(schedule, "eps")
    ref = diffusers.EulerDiscreteScheduler(**BETAS[betas], use_karras_sigmas=karras)
    x_T = start_noise()
    ours = sample(den, x_T, schedule, sampler="euler", steps=steps, karras_sigmas=karras)
    theirs = run_diffusers(ref, den, x_T, steps)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_heun_matches_diffusers():
    schedule = NoiseSchedule.create("scaled_linear")
    den = make_denoiser(schedule, "v")
    ref = diffusers.HeunDiscreteScheduler(**BETAS["scaled_linear"], prediction_type="v_prediction")
    x_T = start_noise()
    ours = sample(den, x_T, schedule, sampler="heun", steps=10, prediction="v")
    theirs = run_diffusers(ref, den, x_T, 10)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_comparison_is_sensitive():
    # Negative control: a different spacing is a different trajectory, far beyond 1e-4,
    # so the agreements above are not a property of this denoiser alone.
    schedule = NoiseSchedule.create("scaled_linear")
    den = make_denoiser(schedule, "eps")
    x_T = start_noise()
    ours = sample(den, x_T, schedule, sampler="ddim", steps=10, spacing="trailing")
    theirs = run_diffusers(diffusers.DDIMScheduler(**BETAS["scaled_linear"], clip_sample=False), den, x_T, 10)
    assert (ours - theirs).abs().max().item() > 1e-2
