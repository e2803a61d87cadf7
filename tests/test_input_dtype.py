"""A network's input of the wrong dtype is one line that says what to do, not torch's
"Input type (c10::Half) and bias type (float) should be the same" from inside a convolution."""

from __future__ import annotations

import copy

import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.models import AutoencoderKL, AutoencoderKLConfig
from ldmkit.models.seed import LatentDiffusionModel


@pytest.fixture(scope="module")
def seed_model() -> LatentDiffusionModel:
    torch.manual_seed(0)
    return LatentDiffusionModel(input_channels=3, latent_dim=16, image_size=(16, 16), num_heads=4).eval()


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(AutoencoderKLConfig(block_channels=(32, 32), num_res_blocks=1)).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_another_float_dtype_than_the_weights_is_refused_outside_autocast(seed_model, dtype) -> None:
    x, z = torch.randn(2, 3, 16, 16), torch.randn(2, 16)
    expected = f"dtype of the UNet's input x is {dtype}, the model's weights' torch.float32: cast"
    with pytest.raises(UserError, match=expected):
        seed_model(x.to(dtype), z)


def test_integer_images_are_refused_with_how_to_scale_them(seed_model, vae) -> None:
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(UserError, match=r"got torch.uint8 \(images go in as floats in \[-1, 1\]"):
        seed_model(pixels, torch.randn(2, 16))
    with pytest.raises(UserError, match="the images must be a floating-point tensor, got torch.uint8"):
        vae.encode(pixels)
    assert vae.encode(pixels.float() / 127.5 - 1).shape == (2, 4, 8, 8)  # what the message says works


def test_autocast_and_matching_dtypes_still_run(seed_model, vae) -> None:
    x, z = torch.randn(2, 3, 16, 16), torch.randn(2, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert seed_model(x.bfloat16(), z).shape == x.shape  # autocast casts both
    with pytest.raises(UserError, match="the dtype of the latents is torch.float64"):
        vae.decode(torch.randn(1, 4, 8, 8, dtype=torch.float64))
    assert copy.deepcopy(vae).double().decode(torch.randn(1, 4, 8, 8, dtype=torch.float64)).dtype == torch.float64
