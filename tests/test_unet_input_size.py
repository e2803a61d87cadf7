"""An input too small for the UNet's downsampling is one line naming the smallest square input,
not GroupNorm's "Expected more than 1 value per channel when training" (said in eval mode too)
or the pool's "Output size is too small". The limit is the network's: exactly the sizes that
some layer would refuse are refused, and the usual configs still take a 1x1 input."""

from __future__ import annotations

import itertools

import pytest
import torch

import ldmkit.models.unet as unet_module
from ldmkit.errors import UserError
from ldmkit.models import UNet, UNetConfig
from ldmkit.models.seed import LatentDiffusionModel


def test_the_seed_model_names_its_smallest_input() -> None:
    torch.manual_seed(0)
    model = LatentDiffusionModel(latent_dim=16, image_size=32, base_channels=32).eval()
    expected = (r"^x of 1x1 pixels is too small for this UNet: its feature map at 1/1 scale is 1x1, one value "
                r"per group of a GroupNorm with one channel per group; the smallest square input it takes is 3x3$")
    with torch.no_grad(), pytest.raises(UserError, match=expected):
        model(torch.randn(1, 3, 1, 1), torch.randn(1, 16))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 3, 3), torch.randn(1, 16)).shape == (1, 3, 3, 3)
        # two channels per group everywhere (base_channels=64): no limit, as before
        assert LatentDiffusionModel(latent_dim=16, image_size=32).eval()(
            torch.randn(1, 3, 1, 1), torch.randn(1, 16)).shape == (1, 3, 1, 1)


@pytest.mark.parametrize("conv_resample", [True, False])
def test_exactly_the_sizes_a_layer_refuses_are_refused(conv_resample, monkeypatch) -> None:
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                           attention_levels=(1,), head_dim=8, norm_groups=8,
                           conv_resample=conv_resample)).eval()
    refused = set()
    with torch.no_grad():
        for size in itertools.product(range(1, 6), repeat=2):
            try:
                assert unet(torch.randn(1, 3, *size), 1).shape == (1, 3, *size)
            except UserError as error:
                assert "too small for this UNet" in str(error)
                refused.add(size)
        assert (1, 1) in refused and (5, 5) not in refused
        monkeypatch.setattr(unet_module, "check_input_size", lambda *args: None)  # torch's own errors
        for size in refused:
            with pytest.raises((ValueError, RuntimeError), match="more than 1 value per channel|too small"):
                unet(torch.randn(1, 3, *size), 1)
