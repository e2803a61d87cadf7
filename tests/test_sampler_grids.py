"""The levels samplers visit at the edges of a schedule: the cosine schedule's top, zero
terminal SNR, one step, 'leading' strides and steps = T, each against the exact denoiser of
Gaussian data (tests/test_samplers.py explains it)."""

import subprocess
import sys

import pytest
import torch

from ldmkit.diffusion import NoiseSchedule, SeededNoise, sample
from ldmkit.diffusion.samplers import check_sampler
from ldmkit.diffusion.timesteps import spaced_timesteps
from ldmkit.errors import UserError
from test_samplers import MU, SD, gaussian_denoiser

COSINE = NoiseSchedule.create("cosine")
SCALED = NoiseSchedule.create("scaled_linear")


def draw(n=4096, seed=0):
    return SeededNoise(range(seed, seed + 4), (n // 4,), dtype=torch.float64).draw()


@pytest.mark.parametrize("name,steps", [("euler", 50), ("heun", 25), ("heun", 100)])
def test_cosine_schedule_eps_model_matches_the_v_model(name, steps):
    # The cosine schedule's alpha_bar_{T-1} = 2.4e-9. Raising it to 2**-24 while telling the network
    # t = T - 1 put Heun's eps samples at mean 3.5 (25 steps) and 21 (10 steps) for data of mean 0.7;
    # the same denoiser given as a v-prediction was right, as each level was used consistently.
    x_T = draw()
    runs = {p: sample(gaussian_denoiser(p, COSINE), x_T, COSINE, sampler=name, steps=steps, prediction=p)
            for p in ("eps", "v")}
    assert (runs["eps"] - runs["v"]).abs().max().item() < 1e-5  # float64 rounding times sigma ~ 2e4
    assert abs(runs["eps"].mean().item() - MU) < 0.03  # 4 standard errors: 4 * 0.4 / 64 = 0.025
    if steps == 100:  # Heun's discretisation error in the spread shrinks with the steps
        assert abs(runs["eps"].std().item() / SD - 1) < 0.05


@pytest.mark.parametrize("name,opts", [("euler", {}), ("heun", {}), ("heun", {"karras_sigmas": True}),
                                       ("euler", {"karras_sigmas": True})])
def test_eps_model_at_zero_terminal_snr_is_refused_by_sigma_space_samplers_too(name, opts):
    # They start from a finite level in place of alpha_bar = 0, but the network is told t = T - 1,
    # where an eps model learned nothing it can give x_0 from (Heun returned mean 1.1 for 0.7).
    zsnr = NoiseSchedule.create("scaled_linear", zero_terminal_snr=True)
    with pytest.raises(UserError, match="zero SNR"):
        sample(gaussian_denoiser("eps", zsnr), draw(8), zsnr, sampler=name, steps=10, **opts)
    x = sample(gaussian_denoiser("v", zsnr), draw(), zsnr, sampler=name, steps=50, prediction="v", **opts)
    assert abs(x.mean().item() - MU) < 0.03


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "heun", "dpmpp-2m"])
def test_one_step_goes_from_pure_noise_to_the_posterior_mean(name):
    # linspace(0, T - 1, 1) and leading's first stride are t = 0: one step there returned the noise.
    calls = []
    x = sample(gaussian_denoiser("eps", SCALED, calls), draw(), SCALED, sampler=name, steps=1,
               noise=SeededNoise(range(4), (1024,), dtype=torch.float64))
    assert [t[0].item() for _, t in calls] == [999.0]
    # E[x0 | x_T] at alpha_bar 0.0047 is within 0.03 of mu for every sample; the noise is not.
    assert (x - MU).abs().max().item() < 0.05


def test_leading_strides_that_leave_the_top_of_the_schedule_are_refused():
    # 600 steps strided by T // 600 = 1 started at t = 599 (alpha_bar 0.1 for SD's schedule).
    for steps, fewer in ((143, 142), (400, 333), (501, 500), (600, 500), (899, 500)):
        with pytest.raises(UserError, match=f"far from pure noise; use {fewer} steps"):
            spaced_timesteps(1000, steps, "leading")
        assert spaced_timesteps(1000, fewer, "leading")[0] >= 899
    with pytest.raises(UserError, match="start at t = 1000 of 0..999, past the last timestep; use 999 steps"):
        spaced_timesteps(1000, 1000, "leading", offset=1)  # SD's offset: every timestep does not fit
    for steps in (2, 7, 25, 30, 50, 100, 250, 500, 900, 999, 1000):  # diffusers' grids, unchanged
        t = spaced_timesteps(1000, steps, "leading")
        assert t.tolist() == [k * (1000 // steps) for k in range(steps - 1, -1, -1)]
    assert spaced_timesteps(1000, 600, "trailing")[0].item() == 999


def test_dpm_solver_runs_every_timestep():
    # steps = T left no point for DPM-Solver's skipped t = 0: linspace repeated a timestep (refused).
    calls = []
    sample(gaussian_denoiser("eps", SCALED, calls), draw(8), SCALED, sampler="dpmpp-2m", steps=1000)
    assert [t[0].item() for _, t in calls] == list(range(999, -1, -1))


def test_check_sampler_refuses_what_the_sampler_would_without_calling_a_network():
    zsnr = NoiseSchedule.create("linear", zero_terminal_snr=True)
    with pytest.raises(UserError, match="far from pure noise"):
        check_sampler("ddim", SCALED, steps=600)
    with pytest.raises(UserError, match="zero SNR"):
        check_sampler("euler", zsnr, steps=25)
    with pytest.raises(UserError, match="no option"):
        check_sampler("euler", SCALED, steps=25, eta=0.5)
    check_sampler("ddim", SCALED, steps=600, spacing="trailing")
    check_sampler("euler", zsnr, steps=25, prediction="v")


def test_generate_refuses_a_collapsed_leading_grid_before_it_writes(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ldmkit.cli", "generate", "--sampler", "ddim", "--steps", "600",
                           "--n", "1", "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "far from pure noise" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
