"""Mistakes a Python caller makes with the networks and the pipeline are `UserError`s that name
the argument they passed, not a reshape, matmul or embedding error from inside a layer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ldmkit import DownSample, LatentDiffusionModel, ResNetBlock, UpSample
from ldmkit.errors import UserError
from ldmkit.models import UNet, UNetConfig
from ldmkit.pipeline import LatentDiffusionPipeline
from tiny_models import save_tiny_class_model


def small_unet(**overrides) -> UNet:
    config = dict(in_channels=4, out_channels=4, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(1,), num_heads=2, head_dim=None, norm_groups=8)
    return UNet(UNetConfig(**{**config, **overrides})).eval()


def test_a_context_of_another_batch_or_dtype_is_named():
    unet = small_unet(context_dim=16)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(UserError, match=r"context has batch 1, x has 2: .*context.expand\(2, -1, -1\)"):
        unet(x, 10, context=torch.randn(1, 7, 16))  # one prompt's context for a batch
    with pytest.raises(UserError, match="dtype of the UNet's context is torch.float64"):
        unet(x, 10, context=torch.randn(2, 7, 16, dtype=torch.float64))
    assert unet(x, 10, context=torch.randn(1, 7, 16).expand(2, -1, -1)).shape == x.shape


def test_inputs_on_another_device_or_not_tensors_are_named():
    unet = small_unet(num_classes=3, cond_dim=6)
    x, labels, cond = torch.randn(2, 4, 8, 8), torch.tensor([0, 1]), torch.randn(2, 6)
    for name, call in (("x", lambda: unet(x.to("meta"), 1, class_labels=labels, cond=cond)),
                       ("class_labels", lambda: unet(x, 1, class_labels=labels.to("meta"), cond=cond)),
                       ("cond", lambda: unet(x, 1, class_labels=labels, cond=cond.to("meta")))):
        with pytest.raises(UserError, match=rf"^{name} is on meta, the UNet on cpu"):
            call()
    with pytest.raises(UserError, match="x must be a torch.Tensor, got ndarray"):
        unet(np.zeros((2, 4, 8, 8), np.float32), 1, class_labels=labels, cond=cond)
    with pytest.raises(UserError, match="cond must be a torch.Tensor, got list"):
        unet(x, 1, class_labels=labels, cond=[[0.0] * 6] * 2)
    with pytest.raises(UserError, match=r"t \(the timesteps\) must be a number or a tensor of shape \[2\]"):
        unet(x, None, class_labels=labels, cond=cond)


def test_class_ids_of_any_integer_dtype_are_ids_and_bools_are_not():
    unet = small_unet(num_classes=3)
    x = torch.randn(3, 4, 8, 8)
    expected = unet(x, 5, class_labels=torch.tensor([0, 2, 3]))
    for dtype in (torch.uint8, torch.int16, torch.int32):
        torch.testing.assert_close(unet(x, 5, class_labels=torch.tensor([0, 2, 3], dtype=dtype)), expected)
    with pytest.raises(UserError, match=r"class_labels must be an integer tensor of shape \[3\]"):
        unet(x, 5, class_labels=torch.tensor([True, False, True]))


def test_the_seed_model_names_its_own_arguments():
    model = LatentDiffusionModel(input_channels=3, latent_dim=16, image_size=16, num_heads=2, base_channels=32,
                                 channel_mult=(1, 2), norm_groups=8)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(UserError, match=r"latent must be a tensor of shape \[2, 16\] \(batch, latent_dim\), "
                                        r"got \(2, 17\)"):
        model(x, torch.randn(2, 17))
    with pytest.raises(UserError, match=r"timesteps must be a scalar or have shape \[2\], got \(3,\)"):
        model(x, torch.randn(2, 16), torch.tensor([1, 2, 3]))
    for arguments, message in ((dict(latent_dim=0), "latent_dim must be a positive int or None, got 0"),
                               (dict(input_channels=0), "input_channels must be a positive int, got 0"),
                               (dict(num_heads=None), "num_heads must be a positive int, got None")):
        with pytest.raises(UserError, match=message):
            LatentDiffusionModel(**{"image_size": 16, **arguments})
    unconditional = LatentDiffusionModel(latent_dim=None, image_size=16, num_heads=2, base_channels=32,
                                         channel_mult=(1, 2), norm_groups=8)
    assert unconditional(x, None).shape == x.shape
    with pytest.raises(UserError, match="latent given, but this model was built with latent_dim=None"):
        unconditional(x, torch.randn(2, 16))


def test_the_exported_blocks_name_their_channels():
    with pytest.raises(UserError, match=r"ResNetBlock expects an embedding of shape \[2, 256\], got \(2, 255\)"):
        ResNetBlock(64, 64, 256)(torch.randn(2, 64, 8, 8), torch.randn(2, 255))
    with pytest.raises(UserError, match=r"DownSample expects x of shape \[B, 32, H, W\], got \(1, 64, 8, 8\)"):
        DownSample(32)(torch.randn(1, 64, 8, 8))
    with pytest.raises(UserError, match=r"UpSample expects x of shape \[B, 32, H, W\], got \(1, 64, 8, 8\)"):
        UpSample(32)(torch.randn(1, 64, 8, 8))


@pytest.fixture(scope="module")
def unconditional_pipe(tmp_path_factory) -> LatentDiffusionPipeline:
    path = save_tiny_class_model(tmp_path_factory.mktemp("model") / "model.safetensors", [])
    return LatentDiffusionPipeline.from_pretrained(path, device="cpu")


def test_cfg_for_an_unconditional_model_is_said_from_python_too(unconditional_pipe):
    with pytest.warns(UserWarning, match=r"cfg \(--cfg\) has no effect: this model is unconditional"):
        unconditional_pipe.generate_latents([0], [-1], sampler="ddim", steps=1, cfg=9.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unconditional_pipe.generate_latents([0], [-1], sampler="ddim", steps=1)


def test_classes_as_a_tensor_of_ids(tmp_path):
    pipe = LatentDiffusionPipeline.from_pretrained(
        save_tiny_class_model(tmp_path / "model.safetensors", ["red", "green", "blue", "grey"]), device="cpu")
    assert pipe.plan(1, torch.tensor([1, 2]), 0) == ([0, 1], [1, 2])  # 0-d tensors matched no id
    assert pipe.plan(2, torch.tensor(3), 0) == ([0, 1], [3, 3])  # iterating a 0-d tensor was a TypeError
    assert pipe.plan(1, np.array(2), 0) == ([0], [2])


def test_the_cfg_warning_names_the_callers_line_and_eval_does_not_raise_it(unconditional_pipe, tmp_path, capsys):
    """A fixed stacklevel named torch's no_grad wrapper; `ldm eval`'s default --cfg [2.0] set the
    warning off for every unconditional model, though the user gave no --cfg."""
    from PIL import Image

    from ldmkit.cli import main

    with pytest.warns(UserWarning, match="has no effect") as caught:
        unconditional_pipe.generate(1, sampler="ddim", steps=1, cfg=3.0)
    assert caught[0].filename == __file__
    data = tmp_path / "data"
    for split, count in (("train", 6), ("val", 4)):
        (data / split).mkdir(parents=True)
        for i in range(count):
            pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / split / f"{i}.png")
    model = save_tiny_class_model(tmp_path / "model.safetensors", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main(["eval", "--model", str(model), "--data", str(data), "--n", "4", "--steps", "2", "--k", "1",
                     "--kid-subsets", "2", "--kid-subset-size", "2", "--device", "cpu", "--quiet",
                     "--out", str(tmp_path / "report.json")]) == 0
    assert "has no effect" not in capsys.readouterr().err
