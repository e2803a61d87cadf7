"""Timesteps of the wrong kind or on the wrong device are one line naming the argument, not
torch's "Cannot copy out of meta tensor" or "new(): invalid data type 'str'", and complex or
boolean timesteps are no longer cast silently to float indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.models.seed import LatentDiffusionModel


@pytest.fixture(scope="module")
def model() -> LatentDiffusionModel:
    torch.manual_seed(0)
    return LatentDiffusionModel(input_channels=3, latent_dim=16, image_size=(16, 16), num_heads=4).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 3, 16, 16), torch.randn(2, 16)


@pytest.mark.parametrize("steps", [torch.zeros(2, device="meta"), torch.tensor(0.0, device="meta")])
def test_timesteps_on_another_device_say_move_it_there(model, steps) -> None:
    x, z = _inputs()
    with pytest.raises(UserError, match=r"^timesteps is on meta, the model on cpu: move it there"):
        model(x, z, steps)
    with pytest.raises(UserError, match=r"^t is on meta, the UNet on cpu: move it there \(t.to\('cpu'\)\)"):
        model.unet(x, steps, cond=z)


NOT_NUMBERS = (r"timesteps must be a number or a tensor of shape \[2\], got",
               r"t \(the timesteps\) must be a number or a tensor of shape \[2\]")
NOT_REAL = (r"timesteps must hold real numbers \(ints or floats\), got torch\.",
            r"t \(the timesteps\) must hold real numbers")


@pytest.mark.parametrize("steps, messages", [
    *((steps, NOT_NUMBERS) for steps in ("1", 1 + 2j, None, object())),  # None: t = 0 for the seed model, so ["a", "b"]
    *((steps, NOT_REAL) for steps in (torch.tensor([1 + 2j, 3 + 0j]), torch.tensor([True, False]), np.array([1j, 2j]))),
])
def test_timesteps_that_are_not_real_numbers_are_refused_not_cast(model, steps, messages) -> None:
    x, z = _inputs()
    with pytest.raises(UserError, match="^" + messages[0]):
        model(x, z, steps if steps is not None else ["a", "b"])
    with pytest.raises(UserError, match="^" + messages[1]):
        model.unet(x, steps, cond=z)


def test_the_accepted_forms_still_run_and_agree(model) -> None:
    x, z = _inputs()
    with torch.no_grad():
        expected = model(x, z, torch.tensor([5.0, 5.0]))
        for steps in (5, 5.0, np.int64(5), np.float32(5.0), [5, 5], np.array([5.0, 5.0]), torch.tensor(5),
                      torch.tensor([5, 5], dtype=torch.uint8)):
            torch.testing.assert_close(model(x, z, steps), expected, rtol=0, atol=0)
        torch.testing.assert_close(model.unet(x, 5, cond=z), expected, rtol=0, atol=0)
        assert model(x, z).shape == x.shape  # omitted: t = 0
    with pytest.raises(UserError, match=r"^timesteps must be a scalar or have shape \[2\], got \(3,\)"):
        model(x, z, torch.zeros(3))
