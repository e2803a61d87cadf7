"""The seed project's API: `LatentDiffusionModel(...)(x, latent, timesteps=None)` and its blocks."""

from __future__ import annotations


import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.models.seed import LatentDiffusionModel
from ldmkit.nn import ResNetBlock


@pytest.fixture(scope="module")
def model() -> LatentDiffusionModel:
    torch.manual_seed(0)
    return LatentDiffusionModel(input_channels=3, latent_dim=512, image_size=(64, 64), num_heads=4).eval()


def test_readme_example() -> None:
    """The README example, as written (needs the top-level exports of `ldmkit`)."""
    import torch

    from ldmkit import DownSample, LatentDiffusionModel, ResNetBlock, SelfAttentionBlock, UpSample

    model = LatentDiffusionModel(input_channels=3, latent_dim=512, image_size=(64, 64), num_heads=4)
    x = torch.randn(8, 3, 64, 64)
    latent = torch.randn(8, 512)
    out = model(x, latent)
    assert out.shape == x.shape

    features = torch.randn(2, 64, 32, 32)
    h = ResNetBlock(64, 128)(features)  # [2, 128, 32, 32]
    h = SelfAttentionBlock(128, num_heads=4)(h)  # [2, 128, 32, 32]
    h = DownSample(128)(h)  # [2, 128, 16, 16]
    h = UpSample(128)(h)  # [2, 128, 32, 32]
    assert h.shape == (2, 128, 32, 32)


def test_seed_shapes_fp32_and_bf16(model: LatentDiffusionModel) -> None:
    x, latent = torch.randn(8, 3, 64, 64), torch.randn(8, 512)
    with torch.no_grad():
        out = model(x, latent)
        assert out.shape == x.shape and out.dtype == torch.float32 and out.abs().max() > 0
        # two images in bf16: a CPU without bf16 arithmetic emulates it at ~1/10 of fp32's speed
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16 = model(x[:2], latent[:2], torch.full((2,), 500))
    assert out16.shape == x[:2].shape and out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()


def test_omitted_timesteps_mean_t0(model: LatentDiffusionModel) -> None:
    x, latent = torch.randn(2, 3, 64, 64), torch.randn(2, 512)
    with torch.no_grad():
        default = model(x, latent)
        torch.testing.assert_close(default, model(x, latent, torch.zeros(2)))
        torch.testing.assert_close(default, model(x, latent, 0))
        assert (model(x, latent, torch.full((2,), 700)) - default).abs().max() > 1e-4


def test_latent_reaches_every_resnet_block(model: LatentDiffusionModel) -> None:
    x = torch.randn(1, 3, 64, 64)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda m, args, n=name: seen.setdefault(n, []).append(args[1]))
        for name, module in model.named_modules()
        if isinstance(module, ResNetBlock)
    ]
    try:
        with torch.no_grad():
            model(x, torch.randn(1, 512))
            model(x, torch.randn(1, 512))
    finally:
        for hook in hooks:
            hook.remove()
    n_levels = len(model.unet.config.channel_mult)
    for path in ("down_blocks", "up_blocks"):
        levels = {name.split(".")[2] for name in seen if name.startswith(f"unet.{path}.")}
        assert levels == {str(i) for i in range(n_levels)}, path
    assert any(name.startswith("unet.mid_block") for name in seen)
    for name, (first, second) in seen.items():
        assert (first - second).abs().max() > 1e-4, f"{name} does not see the latent"


def test_attention_placed_by_resolution(model: LatentDiffusionModel) -> None:
    # 64x64 input, 4 levels: 64, 32, 16, 8 pixels; attention at <= 16.
    assert model.unet.config.attention_levels == (2, 3)
    assert model.unet.config.num_heads == 4


def test_seed_input_errors(model: LatentDiffusionModel) -> None:
    with pytest.raises(UserError):
        model(torch.randn(2, 3, 64, 64), torch.randn(2, 100))
    with pytest.raises(UserError):
        model(torch.randn(2, 1, 64, 64), torch.randn(2, 512))
    with pytest.raises(UserError):
        LatentDiffusionModel(image_size=(64, 64, 3))


@pytest.mark.parametrize("size", [32.0, (32, 32.0), "32", (0, 32), (True, 32)])
def test_an_image_size_that_is_not_whole_numbers_is_one_line(size) -> None:
    with pytest.raises(UserError, match="image_size must be a positive int or \\(height, width\\) of ints"):
        LatentDiffusionModel(input_channels=3, latent_dim=8, image_size=size, num_heads=4)
