"""Noise schedules, timestep spacings and Karras sigmas against their closed forms."""

import math

import pytest
import torch

from ldmkit.diffusion import NoiseSchedule, karras_sigmas, spaced_timesteps
from ldmkit.errors import UserError


def test_linear_betas_endpoints_and_cumprod():
    s = NoiseSchedule.create("linear", num_steps=1000)
    assert s.betas.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    # Equal spacing: constant first difference.
    diffs = s.betas.diff()
    assert torch.allclose(diffs, torch.full_like(diffs, (0.02 - 1e-4) / 999), rtol=0, atol=1e-15)
    # alpha_bar_t = prod_{s<=t} (1 - beta_s), computed here by an explicit product.
    prod, expected = 1.0, []
    for b in s.betas.tolist():
        prod *= 1 - b
        expected.append(prod)
    assert torch.allclose(s.alphas_cumprod, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)


def test_scaled_linear_is_squared_linspace_of_sqrt_betas():
    s = NoiseSchedule.create("scaled_linear", num_steps=1000)
    root = s.betas.sqrt()
    assert root[0].item() == pytest.approx(math.sqrt(0.00085), rel=1e-12)
    assert root[-1].item() == pytest.approx(math.sqrt(0.012), rel=1e-12)
    step = (math.sqrt(0.012) - math.sqrt(0.00085)) / 999
    assert torch.allclose(root.diff(), torch.full((999,), step, dtype=torch.float64), atol=1e-15)


def test_cosine_schedule_matches_nichol_dhariwal_eq17():
    T, s_off = 1000, 0.008
    s = NoiseSchedule.create("cosine", num_steps=T)

    def f(t):
        return math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2

    # Table index i is the paper's t = i + 1; unclipped entries equal f(t)/f(0) exactly.
    for i in (0, 10, 500, 900, 980):
        assert s.alphas_cumprod[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-10)
    assert s.betas.max().item() == pytest.approx(0.999)  # clipped at t = T (f(T) = 0)
    assert bool((s.betas > 0).all())


def test_sigmas_and_snr():
    s = NoiseSchedule.create("scaled_linear")
    a = s.alphas_cumprod
    assert torch.allclose(s.sigmas, ((1 - a) / a).sqrt(), rtol=1e-14)
    t = torch.tensor([0, 17, 999])
    assert torch.allclose(s.snr(t), a[t] / (1 - a[t]), rtol=1e-12)
    # Fractional t: sigma is linear in t between integers (diffusers' Euler convention).
    mid = s.sigma_at(torch.tensor([17.25]))
    assert mid.item() == pytest.approx(0.75 * s.sigmas[17].item() + 0.25 * s.sigmas[18].item(), rel=1e-14)


def test_timestep_at_inverts_sigma_table():
    s = NoiseSchedule.create("linear")
    t = torch.tensor([0.0, 1.0, 250.0, 998.0, 999.0], dtype=torch.float64)
    assert torch.allclose(s.timestep_at(s.sigmas[t.long()]), t, atol=1e-9)
    # Between two table entries: linear in log sigma.
    log_mid = 0.3 * s.sigmas[40].log() + 0.7 * s.sigmas[41].log()
    assert s.timestep_at(log_mid.exp()).item() == pytest.approx(40.7, abs=1e-9)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_zero_terminal_snr_rescale(kind):
    plain = NoiseSchedule.create(kind)
    zero = NoiseSchedule.create(kind, zero_terminal_snr=True)
    assert zero.alphas_cumprod[-1].item() == 0.0  # Lin et al. 2024, Alg. 1: SNR(T) = 0
    assert zero.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-12)
    # sqrt(alpha_bar) is an affine map of the original (shift then scale).
    sa, sz = plain.alphas_cumprod.sqrt(), zero.alphas_cumprod.sqrt()
    expected = (sa - sa[-1]) * sa[0] / (sa[0] - sa[-1])
    assert torch.allclose(sz, expected, atol=1e-12)
    assert zero.snr(torch.tensor([999])).item() == 0.0
    assert math.isinf(zero.sigmas[-1].item())


def test_add_noise_is_forward_process():
    s = NoiseSchedule.create("linear")
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    out = s.add_noise(x0, eps, t)
    for k in range(3):
        a = s.alphas_cumprod[t[k]]
        assert torch.allclose(out[k], a.sqrt() * x0[k] + (1 - a).sqrt() * eps[k], atol=1e-14)
    assert s.add_noise(x0.float(), eps.float(), t).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="scaled_linear", num_steps=100, beta_start=0.001, beta_end=0.02, zero_terminal_snr=True),
        dict(kind="cosine", num_steps=50),
    ],
)
def test_to_dict_round_trip(kwargs):
    s = NoiseSchedule.create(**kwargs)
    back = NoiseSchedule.from_dict(s.to_dict())
    assert torch.equal(back.betas, s.betas)
    custom = NoiseSchedule(s.betas)
    assert torch.equal(NoiseSchedule.from_dict(custom.to_dict()).betas, s.betas)


def test_schedule_user_errors():
    with pytest.raises(UserError):
        NoiseSchedule.create("quadratic")
    with pytest.raises(UserError):
        NoiseSchedule.create("linear", beta_start=0.1, beta_end=0.01)
    with pytest.raises(UserError):
        NoiseSchedule.create("cosine", beta_start=0.1)


def test_spacings_match_their_definitions():
    # leading: multiples of T // n; trailing: starts at T - 1; linspace: endpoints 0 and T - 1.
    assert spaced_timesteps(1000, 4, "leading").tolist() == [750, 500, 250, 0]
    assert spaced_timesteps(1000, 4, "leading", offset=1).tolist() == [751, 501, 251, 1]
    assert spaced_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert spaced_timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    assert spaced_timesteps(1000, 3, "linspace", fractional=True).tolist() == [999, 499.5, 0]
    assert spaced_timesteps(1000, 4, "linspace", skip_zero=True).tolist() == [999, 749, 500, 250]
    with pytest.raises(UserError):
        spaced_timesteps(1000, 4, "uniform")
    with pytest.raises(UserError):
        spaced_timesteps(1000, 1000, "leading", offset=1)  # t = 1000 is out of range


def test_karras_sigmas_eq5():
    sig = karras_sigmas(0.002, 80.0, 10, rho=7.0)
    assert sig[0].item() == pytest.approx(80.0, rel=1e-12)
    assert sig[-1].item() == pytest.approx(0.002, rel=1e-12)
    # sigma^(1/rho) is evenly spaced.
    root = sig ** (1 / 7)
    assert torch.allclose(root.diff(), root.diff()[0].expand(9), rtol=1e-10)
