"""KL autoencoder: posterior math, latent normalisation, shapes, a tiny reconstruction run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.models.autoencoder import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian
from ldmkit.models.presets import VAE_PRESETS


def tiny(**overrides: object) -> AutoencoderKLConfig:
    fields = dict(block_channels=(16, 32), num_res_blocks=1, norm_groups=4, latent_channels=4)
    fields.update(overrides)
    return AutoencoderKLConfig(**fields)


# ---- posterior -------------------------------------------------------------------------------


def test_kl_closed_form() -> None:
    # KL(N(mu, s^2) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - ln s^2) per element.
    mean = torch.full((2, 1, 2, 3), 1.5)
    logvar = torch.full((2, 1, 2, 3), math.log(0.25))
    per_element = 0.5 * (1.5**2 + 0.25 - 1 - math.log(0.25))
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl(), torch.full((2,), 6 * per_element))
    assert DiagonalGaussian(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).kl().item() == 0.0


def test_logvar_clamp_and_sampling_moments() -> None:
    post = DiagonalGaussian(torch.zeros(1), torch.tensor([100.0]))
    assert post.logvar.item() == 20.0
    mean, logvar = torch.tensor([[2.0, -1.0]]), torch.tensor([[math.log(4.0), math.log(0.01)]])
    post = DiagonalGaussian(mean.expand(20000, 2), logvar.expand(20000, 2))
    z = post.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mean[0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([2.0, 0.1]), atol=0.03, rtol=0)
    again = post.sample(torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def test_point_mass_posterior() -> None:
    model = AutoencoderKL(tiny(double_z=False))
    assert model.quant_conv.out_channels == 4
    post = model.posterior(torch.randn(1, 3, 8, 8))
    assert post.logvar is None and torch.equal(post.sample(), post.mean)
    torch.testing.assert_close(post.kl(), 0.5 * post.mean.pow(2).sum(dim=(1, 2, 3)))


# ---- codec API -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels,factor", [((16, 32), 2), ((16, 16, 32), 4), ((8, 8, 16, 16), 8)])
def test_shapes_and_downsample_factor(channels: tuple[int, ...], factor: int) -> None:
    config = tiny(block_channels=channels)
    assert config.downsample_factor == factor
    model = AutoencoderKL(config).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        z = model.encode(images)
        assert z.shape == (2, 4, 16 // factor, 16 // factor) and z.dtype == torch.float32
        assert model.decode(z).shape == images.shape
        rec, post = model(images, generator=torch.Generator().manual_seed(1))
        assert rec.shape == images.shape and post.kl().shape == (2,)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z16 = model.encode(images)
            out16 = model.decode(z16)
    assert z16.dtype == torch.bfloat16 and out16.dtype == torch.bfloat16 and out16.shape == images.shape
    assert (z16.float() - z).abs().max() < 0.1 * z.abs().max() + 0.05


def test_decoder_has_one_more_resnet_per_level() -> None:
    model = AutoencoderKL(tiny(num_res_blocks=2))
    assert all(len(level.resnets) == 2 for level in model.encoder.down_blocks)
    assert all(len(level.resnets) == 3 for level in model.decoder.up_blocks)


def test_latent_normalisation_and_state_dict() -> None:
    torch.manual_seed(0)
    model = AutoencoderKL(tiny()).eval()
    images = torch.randn(2, 3, 8, 8)
    shift, scale = torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([2.0, 0.5, 1.0, 4.0])
    model.set_latent_stats(shift, scale)
    with torch.no_grad():
        raw = model.encode_raw(images)
        z = model.encode(images)
        torch.testing.assert_close(z, (raw - shift[None, :, None, None]) * scale[None, :, None, None])
        torch.testing.assert_close(model.decode(z), model.decode_raw(raw), atol=1e-5, rtol=1e-5)
    state = model.state_dict()
    assert torch.equal(state["latent_scale"], scale) and torch.equal(state["latent_shift"], shift)
    fresh = AutoencoderKL(tiny())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.latent_scale, scale)
    model.set_latent_stats(0.5, 0.25)  # scalars broadcast to every channel
    assert torch.equal(model.latent_scale, torch.full((4,), 0.25))


@pytest.mark.parametrize("shift,scale", [([0.0] * 3, 1.0), (0.0, -1.0), (float("nan"), 1.0), (0.0, [1, 2, 3, 0])])
def test_bad_latent_stats_raise(shift: object, scale: object) -> None:
    with pytest.raises(UserError):
        AutoencoderKL(tiny()).set_latent_stats(shift, scale)


def test_input_errors() -> None:
    model = AutoencoderKL(tiny(block_channels=(16, 16, 32)))
    with pytest.raises(UserError, match="divisible"):
        model.encode(torch.randn(1, 3, 10, 8))
    with pytest.raises(UserError):
        model.encode(torch.randn(1, 1, 8, 8))
    with pytest.raises(UserError):
        model.decode(torch.randn(1, 3, 2, 2))
    with pytest.raises(UserError):
        tiny(norm_groups=5)


def test_config_round_trip_and_presets() -> None:
    config = VAE_PRESETS["tiny"](latent_channels=3)
    assert config.downsample_factor == 4 and config.latent_channels == 3
    back = AutoencoderKLConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and isinstance(back.block_channels, tuple)
    assert VAE_PRESETS["sd"]().downsample_factor == 8


def test_channels_last_same_output() -> None:
    torch.manual_seed(0)
    model = AutoencoderKL(tiny()).eval()
    images, latents = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        ref_z, ref_x = model.encode(images), model.decode(latents)
        model = model.to(memory_format=torch.channels_last)
        z = model.encode(images.contiguous(memory_format=torch.channels_last))
        x = model.decode(latents.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(z, ref_z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x, ref_x, atol=1e-5, rtol=1e-5)


def test_tiny_vae_reconstructs_a_batch() -> None:
    torch.manual_seed(0)
    model = AutoencoderKL(tiny())
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    images = torch.stack(
        [torch.stack([torch.sin(3 * xx + k), torch.cos(2 * yy - k), xx * yy * (1 - 2 * (k % 2))]) for k in range(4)]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        reconstruction, posterior = model(images, generator=generator)
        loss = (reconstruction - images).pow(2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mse = (model.decode(model.encode(images)) - images).pow(2).mean().item()
    assert mse < 0.1 * images.var().item()
