"""The autoencoder's input on another device than its weights, or not a tensor at all, is one line
naming images / latents, as the UNet's is, not torch's "Tensor on device cpu is not on the
expected device meta!" from inside its first convolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.models import AutoencoderKL, AutoencoderKLConfig


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(AutoencoderKLConfig(block_channels=(32, 32), num_res_blocks=1)).eval()


def test_images_on_another_device_say_move_them_there(vae) -> None:
    images = torch.randn(1, 3, 16, 16, device="meta")
    expected = r"^images are on meta, the autoencoder on cpu: move them there \(images.to\('cpu'\)\)$"
    for call in (vae.encode, vae.encode_raw, vae.posterior, vae):
        with pytest.raises(UserError, match=expected):
            call(images)


def test_latents_on_another_device_say_move_them_there(vae) -> None:
    latents = torch.randn(1, 4, 8, 8, device="meta")
    for call in (vae.decode, vae.decode_raw):
        with pytest.raises(UserError, match=r"^latents are on meta, the autoencoder on cpu: move them there"):
            call(latents)


def test_an_array_is_refused_naming_the_argument(vae) -> None:
    with pytest.raises(UserError, match="^images must be a torch.Tensor, got ndarray$"):
        vae.encode(np.zeros((1, 3, 16, 16), dtype=np.float32))
    with pytest.raises(UserError, match="^latents must be a torch.Tensor, got list$"):
        vae.decode([[0.0]])


def test_inputs_on_the_right_device_still_run(vae) -> None:
    with torch.no_grad():
        latents = vae.encode(torch.randn(2, 3, 16, 16))
        assert latents.shape == (2, 4, 8, 8)
        assert vae.decode(latents).shape == (2, 3, 16, 16)


def test_inputs_too_small_for_its_groups_name_the_smallest_size(vae, monkeypatch) -> None:
    # (32, 32) with 32 groups: one channel per group at the latent resolution, which must not be 1x1
    expected = (r"^images of 2x2 pixels are too small for this autoencoder: its feature map at 1/2 scale is 1x1, "
                r"one value per group of a GroupNorm with one channel per group; the smallest square input it "
                r"takes is 4x4$")
    with torch.no_grad():
        with pytest.raises(UserError, match=expected):
            vae.encode(torch.randn(1, 3, 2, 2))
        with pytest.raises(UserError, match=r"^latents of 1x1 pixels are too small for this autoencoder's decoder"):
            vae.decode(torch.randn(1, 4, 1, 1))
        assert vae.encode(torch.randn(1, 3, 2, 4)).shape == (1, 4, 1, 2)  # two values per group: fine
        assert vae.decode(torch.randn(1, 4, 1, 2)).shape == (1, 3, 2, 4)
        monkeypatch.setattr("ldmkit.models.autoencoder.check_input_size", lambda *args, **kwargs: None)
        for call, tensor in ((vae.encode, torch.randn(1, 3, 2, 2)), (vae.decode, torch.randn(1, 4, 1, 1))):
            with pytest.raises(ValueError, match="Expected more than 1 value per channel"):  # what it was
                call(tensor)
