"""Samplers against the exact denoiser of Gaussian data, plus seeding, img2img and inpainting.

Data x0 ~ N(mu, s^2) per dimension has the exact posterior mean
    E[x0 | x_t] = mu + sqrt(a) s^2 / (a s^2 + 1 - a) (x_t - sqrt(a) mu),
so any sampling error comes from the sampler alone. The probability-flow ODE of Gaussian
data is affine, so a deterministic sampler must converge to the exact map
    x0 = mu + s (x_T - sqrt(a_0) mu) / sqrt(a_0 s^2 + 1 - a_0)
where a_0 is alpha_bar at the sampler's first timestep.
"""

import numpy as np
import pytest
import torch

from ldmkit.diffusion import NoiseSchedule, SeededNoise, sample
from ldmkit.diffusion.samplers import DEFAULT_STEPS, SAMPLERS, sampler_options
from ldmkit.errors import UserError

MU, SD = 0.7, 0.4
LINEAR = NoiseSchedule.create("linear")


def gaussian_denoiser(prediction="eps", schedule=LINEAR, calls=None):
    def denoiser(x, t):
        if calls is not None:
            calls.append((x.clone(), t.clone()))
        a = schedule.alpha_bar_at(t).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        x0 = MU + a.sqrt() * SD**2 / (a * SD**2 + 1 - a) * (x - a.sqrt() * MU)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]

    return denoiser


def exact_flow(x_T, a0):
    return MU + SD * (x_T - a0**0.5 * MU) / (a0 * SD**2 + 1 - a0) ** 0.5


# Relative std tolerance = discretisation bias at the documented step count (measured against
# the exact flow map; it shrinks at the rate checked in test_ode_samplers_converge_at_their_order)
# plus 4 Monte-Carlo standard errors of a sample std, 4 / sqrt(2 N) = 2.2% for N = 16384.
# DDIM/Euler (first order) at 50 steps shrink the std by ~6%; DPM++(2M) at 25 by ~4% (its last
# step jumps from sigma ~0.14 to the posterior mean); Heun at 25 overshoots by ~2%; DDPM with
# the "fixed small" variance at 250 strided steps is ~3.5% narrow (exact linear-Gaussian
# recursion). Mean: 4 standard errors (4 * 0.4 / 128 = 0.0125) + start-level bias
# sqrt(a_0) mu s < 0.003 + discretisation < 0.004 -> 0.02.
STD_TOL = {"ddim": 0.085, "euler": 0.085, "dpmpp-2m": 0.065, "heun": 0.05, "ddpm": 0.06}
CASES = [(name, pred) for name in SAMPLERS for pred in ("eps", "v", "x0")]


@pytest.mark.parametrize("name,prediction", CASES)
def test_sampler_reproduces_gaussian_data(name, prediction):
    noise = SeededNoise(range(16), (1024,), dtype=torch.float64)
    x_T = noise.draw()
    steps = 250 if name == "ddpm" else DEFAULT_STEPS[name]
    x = sample(gaussian_denoiser(prediction), x_T, LINEAR, sampler=name, steps=steps,
               prediction=prediction, noise=noise)
    assert x.shape == x_T.shape and x.dtype == torch.float64
    assert abs(x.mean().item() - MU) < 0.02
    assert abs(x.std().item() / SD - 1) < STD_TOL[name]


ODE_CASES = [("ddim", 50, 1, {}), ("euler", 50, 1, {}), ("euler", 50, 1, {"karras_sigmas": True}),
             ("heun", 25, 2, {}), ("heun", 25, 2, {"karras_sigmas": True}),
             ("dpmpp-2m", 25, 2, {}), ("dpmpp-2m", 25, 2, {"karras_sigmas": True})]


@pytest.mark.parametrize("name,steps,order,opts", ODE_CASES)
def test_ode_samplers_converge_at_their_order(name, steps, order, opts):
    # Error against the exact map falls by 2^order per doubling of steps (measured ratios:
    # first order 1.96-1.98, second order 4.3-22); a wrong coefficient breaks convergence.
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for n in (steps, 2 * steps, 4 * steps):
        ts = []
        x = sample(gaussian_denoiser(), x_T, LINEAR, sampler=name, steps=n,
                   callback=lambda i, t, x: ts.append(t), **opts)
        a0 = LINEAR.alpha_bar_at(torch.tensor(ts[0])).item()
        errors.append((x - exact_flow(x_T, a0)).abs().max().item())
    low, high = (1.8, 2.3) if order == 1 else (3.5, 50)
    for coarse, fine in zip(errors, errors[1:]):
        assert low < coarse / fine < high, errors
    assert errors[-1] < 0.03


def test_ddpm_full_chain_is_ho_algorithm_2():
    # Ho et al. 2020, Alg. 2: x_{t-1} = (x_t - beta_t / sqrt(1 - a_t) eps) / sqrt(1 - beta_t)
    # + sigma_t z with sigma_t^2 = beta-tilde; our sampler uses the posterior form (eq. 7).
    sched = NoiseSchedule.create("linear", num_steps=40, beta_start=1e-3, beta_end=0.2)
    den = gaussian_denoiser("eps", sched)
    seeds, shape = [3, 4], (5,)
    x = sample(den, None, sched, sampler="ddpm", noise=SeededNoise(seeds, shape, dtype=torch.float64))

    ref_noise = SeededNoise(seeds, shape, dtype=torch.float64)
    y = ref_noise.draw()
    a, b = sched.alphas_cumprod, sched.betas
    for t in range(39, -1, -1):
        eps = den(y, torch.full((2,), float(t)))
        y = (y - b[t] / (1 - a[t]).sqrt() * eps) / (1 - b[t]).sqrt()
        if t > 0:
            var = (1 - a[t - 1]) / (1 - a[t]) * b[t]
            y = y + var.sqrt() * ref_noise.draw()
    assert torch.allclose(x, y, atol=1e-10)


# At alpha_bar = 0 the exact map is mu + s x_T. Measured max errors: DDIM 0.072 and
# DPM++(2M) 0.037 at 100 trailing steps (both first order here: their last step jumps from
# t = 9, where the SD schedule's sigma^2 ~ 0.008, to the posterior mean), Euler 0.057 at 100,
# Heun 0.0017 at 50 (floor ~0.003: the Euler step from sigma(t=0) to 0). A NaN or a start
# that assumes signal in x_T fails these bounds.
ZSNR_CASES = [("ddim", 100, 0.1, {"spacing": "trailing"}), ("dpmpp-2m", 100, 0.06, {"spacing": "trailing"}),
              ("euler", 100, 0.08, {}), ("heun", 50, 0.005, {})]


@pytest.mark.parametrize("name,steps,tol,opts", ZSNR_CASES)
def test_zero_terminal_snr_v_prediction(name, steps, tol, opts):
    zsnr = NoiseSchedule.create("scaled_linear", zero_terminal_snr=True)
    x_T = torch.randn(512, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = sample(gaussian_denoiser("v", zsnr), x_T, zsnr, sampler=name, steps=steps, prediction="v", **opts)
    assert (x - (MU + SD * x_T)).abs().max().item() < tol


def test_eps_at_zero_snr_is_user_error():
    zsnr = NoiseSchedule.create("linear", zero_terminal_snr=True)
    with pytest.raises(UserError, match="zero SNR"):
        sample(gaussian_denoiser(), torch.zeros(1, 1), zsnr, sampler="ddim", spacing="trailing")


@pytest.mark.parametrize("name,opts", [("ddpm", {"steps": 20}), ("ddim", {"eta": 0.7, "steps": 10}),
                                       ("dpmpp-2m", {"steps": 8})])
def test_same_seed_same_sample_whatever_the_batch(name, opts):
    init = torch.full((1, 3, 4), 0.3)
    for extra in ({}, {"init": init, "strength": 0.6}):
        alone = SeededNoise([7], (3, 4))
        x1 = sample(gaussian_denoiser(), None, LINEAR, sampler=name, noise=alone,
                    **opts, **{k: v for k, v in extra.items()})
        crowd = SeededNoise([1, 7, 2], (3, 4))
        if "init" in extra:
            extra = {**extra, "init": init.expand(3, 3, 4)}
        x3 = sample(gaussian_denoiser(), None, LINEAR, sampler=name, noise=crowd, **opts, **extra)
        torch.testing.assert_close(x3[1], x1[0], atol=1e-6, rtol=0)
        assert (x3[0] - x1[0]).abs().max() > 1e-2  # another seed gives another sample


def test_seeded_noise_rows_follow_their_seed():
    a = SeededNoise([5, 6], (2, 3)).draw()
    b = SeededNoise([6], (2, 3), dtype=torch.float64).draw()
    assert torch.equal(a[1], b[0].float())
    assert torch.equal(a[0], torch.randn(2, 3, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(UserError):
        SeededNoise([1.5], (2,))
    for bad in (True, -1, 2**63, "5"):
        with pytest.raises(UserError, match="seeds must be integers in"):
            SeededNoise([bad], (2,))
    assert torch.equal(SeededNoise([np.int64(5), np.uint32(6)], (2, 3)).draw(), a)  # numpy's integers are seeds


def test_callback_reports_each_step_with_descending_t():
    seen = []
    sample(gaussian_denoiser(), torch.randn(2, 3), LINEAR, sampler="heun", steps=6,
           callback=lambda i, t, x: seen.append((i, t, x.shape)))
    assert [s[0] for s in seen] == list(range(6))
    ts = [s[1] for s in seen]
    assert ts[0] == 999 and all(a > b for a, b in zip(ts, ts[1:]))


def test_img2img_starts_from_noised_init_at_strength():
    calls = []
    init = torch.randn(2, 4, dtype=torch.float64)
    x_T = torch.randn(2, 4, dtype=torch.float64)
    sample(gaussian_denoiser(calls=calls), x_T, LINEAR, sampler="ddim", steps=20, init=init, strength=0.5)
    assert len(calls) == 10  # int(20 * 0.5) steps, the last ten of the DDIM grid
    t0 = calls[0][1]
    assert t0.tolist() == [450.0, 450.0]  # leading spacing: 950, 900, ..., 0
    torch.testing.assert_close(calls[0][0], LINEAR.add_noise(init, x_T, t0.double()))
    out = sample(gaussian_denoiser(), x_T, LINEAR, sampler="ddim", steps=20, init=init, strength=0.0)
    assert torch.equal(out, init)


def test_inpainting_keeps_the_unmasked_region():
    g = torch.Generator().manual_seed(4)
    init = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) + 5.0  # far from the data
    x_T = torch.randn(init.shape, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1.0
    for name in ("dpmpp-2m", "euler", "ddim"):
        levels = []
        out = sample(gaussian_denoiser(), x_T, LINEAR, sampler=name, steps=10, init=init, mask=mask,
                     callback=lambda i, t, x: levels.append(x[..., 2:].clone()))
        assert torch.equal(out[..., 2:], init[..., 2:])  # kept exactly at the clean end
        assert (out[..., :2] - MU).abs().mean() < 1.5  # regenerated towards the data
        # Mid-way, the kept region is init noised to that level with the run's own noise.
        assert (levels[4] - init[..., 2:]).abs().max() > 1e-3
    full = sample(gaussian_denoiser(), x_T, LINEAR, sampler="ddim", steps=10, init=init, strength=0.8,
                  mask=torch.ones_like(init))
    plain = sample(gaussian_denoiser(), x_T, LINEAR, sampler="ddim", steps=10, init=init, strength=0.8)
    assert torch.equal(full, plain)


def test_float32_samples_stay_float32():
    x_T = torch.randn(2, 3)
    for name in SAMPLERS:
        out = sample(gaussian_denoiser(), x_T, LINEAR, sampler=name, steps=5)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_user_errors():
    x_T = torch.randn(1, 2)
    den = gaussian_denoiser()
    with pytest.raises(UserError, match="unknown sampler"):
        sample(den, x_T, LINEAR, sampler="plms")
    for bad in (0, 1001, 2.5):
        with pytest.raises(UserError, match="steps"):
            sample(den, x_T, LINEAR, sampler="ddim", steps=bad)
    with pytest.raises(UserError, match="no option eta"):
        sample(den, x_T, LINEAR, sampler="euler", eta=0.5)
    with pytest.raises(UserError, match="spacing"):
        sample(den, x_T, LINEAR, sampler="ddim", spacing="even")
    with pytest.raises(UserError, match="mask needs init"):
        sample(den, x_T, LINEAR, mask=torch.ones(1, 2))
    with pytest.raises(UserError, match="strength"):
        sample(den, x_T, LINEAR, init=x_T, strength=1.5)
    with pytest.raises(UserError, match="prediction"):
        sample(den, x_T, LINEAR, prediction="epsilon")
    with pytest.raises(UserError, match="noise"):
        sample(den, None, LINEAR)
    assert "karras_sigmas" in sampler_options("heun") and "eta" in sampler_options("ddim")
    for sampler, option in (("ddim", {"eta": "0.5"}), ("euler", {"karras_sigmas": "no"}), ("ddim", {"spacing": 1}),
                            ("ddim", {"steps_offset": 1.5}), ("ddim", {"eta": True})):
        with pytest.raises(UserError, match=f"sampler '{sampler}': {next(iter(option))} must be a"):
            sample(den, x_T, LINEAR, sampler=sampler, steps=2, **option)
    sample(den, x_T, LINEAR, sampler="ddim", steps=2, eta=np.float32(0.5), steps_offset=np.int64(1))


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmpp-2m", "euler", "heun"])
def test_a_denoiser_returning_another_shape_is_refused(name):
    """A UNet with the wrong out_channels broadcast into a sample of the noise's shape."""
    x_T = torch.randn(2, 4, 3)
    with pytest.raises(UserError, match=r"denoiser returned shape \(2, 1, 3\) for an input of \(2, 4, 3\)"):
        sample(lambda x, t: x[:, :1], x_T, LINEAR, sampler=name, steps=3)


def test_zero_mask_returns_the_clean_init_even_when_the_last_level_is_not_clean():
    """DDIM with set_alpha_to_one=False (SD's config) ends at alpha_bar(t=0) < 1; the kept
    region must still come back as the clean init, not init plus a little noise."""
    from ldmkit.diffusion import NoiseSchedule, sample

    schedule = NoiseSchedule.create("scaled_linear")
    init = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    out = sample(lambda x, t: 0.1 * x, x_T, schedule, sampler="ddim", steps=5, init=init,
                 mask=torch.zeros(1, 1, 4, 4), set_alpha_to_one=False)
    assert torch.equal(out, init)
