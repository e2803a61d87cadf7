"""`LatentDiffusionPipeline` on trained ldmkit models: loading, planning, per-seed determinism,
guidance defaults and the checks on what a model can be asked for."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.interop import convert
from ldmkit.pipeline import DEFAULT_CFG, MAX_JOB_IMAGES, LatentDiffusionPipeline
from tiny_sd import save_class_model

SAMPLING = dict(sampler="ddim", steps=4)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    save_class_model(folder / "model.safetensors")
    (folder / "config.json").write_text('{"image_size": 16}')  # a run folder's resolved config
    return folder


@pytest.fixture(scope="module")
def pipe(run_folder: Path) -> LatentDiffusionPipeline:
    return LatentDiffusionPipeline.from_pretrained(run_folder, device="cpu")


def test_run_folder_and_file_load_the_same_model(pipe, run_folder) -> None:
    assert (pipe.class_names, pipe.image_size, pipe.prediction, pipe.takes_text) == (
        ["red", "green", "blue"], 16, "v", False
    )
    assert pipe.latent_shape == (4, 8, 8)
    other = LatentDiffusionPipeline.from_pretrained(run_folder / "model.safetensors", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), other.unet.state_dict().values()))


def test_plan_seeds_and_classes(pipe) -> None:
    assert pipe.plan(None, None, 5) == ([5, 6, 7], [0, 1, 2])  # one per class
    assert pipe.plan(2, ["Blue", 0], 0) == ([0, 1, 2, 3], [2, 2, 0, 0])
    with pytest.raises(UserError, match="unknown class 'purple'; this model knows: 0=red, 1=green, 2=blue"):
        pipe.plan(1, ["purple"], 0)
    with pytest.raises(UserError, match=r"n \(--n\) must be at least 1"):
        pipe.plan(0, None, 0)


def test_plan_refuses_a_job_too_large_to_list_before_listing_it(pipe) -> None:
    assert len(pipe.plan(MAX_JOB_IMAGES, None, 0)[0]) == MAX_JOB_IMAGES
    with pytest.raises(UserError, match="1,000,001 images is more than one job makes"):
        pipe.plan(MAX_JOB_IMAGES + 1, None, 0)
    with pytest.raises(UserError, match="2,000,000 images"):  # n per listed class
        pipe.plan(MAX_JOB_IMAGES, ["red", "blue"], 0)


def test_image_k_depends_only_on_its_seed(pipe) -> None:
    together = pipe.generate_uint8([3, 4, 5], [0, 1, 2], batch_size=3, **SAMPLING)
    one_by_one = pipe.generate_uint8([3, 4, 5], [0, 1, 2], batch_size=1, **SAMPLING)
    assert torch.equal(together, one_by_one)
    assert together.shape == (3, 3, 16, 16) and together.dtype == torch.uint8
    assert not torch.equal(together[0], together[1])


def test_guidance_default_and_class_effect(pipe) -> None:
    default = pipe.generate_latents([0], [1], **SAMPLING)
    assert torch.equal(default, pipe.generate_latents([0], [1], cfg=DEFAULT_CFG, **SAMPLING))
    assert not torch.equal(default, pipe.generate_latents([0], [1], cfg=1.0, **SAMPLING))
    assert not torch.equal(default, pipe.generate_latents([0], [2], **SAMPLING))
    images = pipe.generate(2, classes=["red"], seed=3, **SAMPLING)
    assert [im.size for im in images] == [(16, 16)] * 2
    assert np.array_equal(np.asarray(images[0]), pipe.generate_uint8([3], [0], **SAMPLING)[0].permute(1, 2, 0).numpy())


def test_what_a_model_cannot_do_is_a_user_error(pipe, run_folder, tmp_path) -> None:
    with pytest.raises(UserError, match="takes no prompt"):
        pipe.generate(1, prompt="a cat", **SAMPLING)
    with pytest.raises(UserError, match="unknown sampler"):
        pipe.generate(1, sampler="plms")
    convert(run_folder, tmp_path / "unet_only", to="diffusers")
    shutil.rmtree(tmp_path / "unet_only" / "vae")
    with pytest.raises(UserError, match="holds unet; generating needs a UNet and a VAE"):
        LatentDiffusionPipeline.from_pretrained(tmp_path / "unet_only", device="cpu")
    with pytest.raises(UserError, match="no such model file or folder"):
        LatentDiffusionPipeline.from_pretrained(tmp_path / "missing.safetensors", device="cpu")
    from ldmkit.train.inference_file import save_inference_file

    save_inference_file(tmp_path / "vae_run" / "vae.safetensors", unet=None, vae=pipe.vae, run_config={})
    with pytest.raises(UserError, match="holds vae; generating needs a UNet and a VAE; run its `ldm train` "
                                        "command again to train the UNet"):  # a run stopped before its UNet
        LatentDiffusionPipeline.from_pretrained(tmp_path / "vae_run", device="cpu")


def test_python_callers_get_the_checks_the_command_line_makes(pipe) -> None:
    """The checks ran only in `ldm generate`, `ldm eval` and the server: from Python, NaN or
    infinite guidance returned black images and a negative prompt was dropped without a word."""
    for cfg in (float("nan"), float("inf")):
        with pytest.raises(UserError, match="guidance scale .* must be a finite number"):
            pipe.generate(1, classes=["red"], cfg=cfg, **SAMPLING)
    with pytest.raises(UserError, match="guidance scale .* must be a number, got '2'"):
        pipe.generate_latents([0], [0], cfg="2", **SAMPLING)
    with pytest.raises(UserError, match="a negative prompt needs a text-to-image model"):
        pipe.generate(1, negative_prompt="blurry", **SAMPLING)
    with pytest.raises(UserError, match="image must be a PIL image or a file path, got Tensor"):
        pipe.img2img(torch.zeros(3, 16, 16), **SAMPLING)


def test_a_samplers_own_options_pass_through_and_typos_are_named(pipe) -> None:
    still = pipe.generate_uint8([0], [1], sampler="ddim", steps=4)
    assert torch.equal(still, pipe.generate_uint8([0], [1], sampler="ddim", steps=4, eta=0.0))  # ddim's default
    assert not torch.equal(still, pipe.generate_uint8([0], [1], sampler="ddim", steps=4, eta=1.0))
    assert len(pipe.generate(1, sampler="euler", steps=3, karras_sigmas=True)) == 1
    with pytest.raises(UserError, match="sampler 'ddim' has no option etaa; it takes"):
        pipe.generate(1, sampler="ddim", steps=2, etaa=0.5)


def test_counts_and_seeds_are_whole_numbers_of_any_integer_type(pipe) -> None:
    assert pipe.plan(np.int64(2), "blue", np.int64(7)) == ([7, 8], [2, 2])  # one class as a string, numpy ints
    for bad in (dict(n=2.5), dict(n="2"), dict(seed=True), dict(seed="3"), dict(seed=None)):
        with pytest.raises(UserError, match="must be a whole number"):
            pipe.plan(bad.get("n"), None, bad.get("seed", 0))
    with pytest.raises(UserError, match="batch_size must be a whole number"):
        pipe.generate(1, batch_size=2.5, **SAMPLING)
    assert pipe.plan(None, np.array([2, 0]), 0) == ([0, 1], [2, 0])  # an array of ids (its truth value is ambiguous)
    assert pipe.plan(None, np.int64(1), 0) == ([0], [1])


def test_numbers_of_numpy_and_torch_are_numbers(pipe) -> None:
    """c3ceab8 took numpy's and torch's scalars as cfg; the type check added after it refused them."""
    reference = pipe.generate_uint8([0], [1], sampler="ddim", steps=4, cfg=2.5)
    for cfg in (np.float32(2.5), torch.tensor(2.5)):
        assert torch.equal(pipe.generate_uint8([0], [1], sampler="ddim", steps=np.int64(4), cfg=cfg), reference)
    with pytest.raises(UserError, match="must be a number, got tensor"):
        pipe.generate_latents([0], [0], steps=2, cfg=torch.ones(2))


def test_a_class_named_by_a_folder_that_is_not_utf8_is_found_as_typed(pipe) -> None:
    """The class name is the folder name's printable form (caf\\xe9); `--class` given the raw name
    (a shell passes the bytes: caf\\udce9 to Python) finds it too."""
    escaped = copy.copy(pipe)
    escaped.class_names = ["caf\\xe9", "tea", "blue"]
    raw = os.fsdecode(b"caf\xe9")
    assert escaped.class_id(raw) == escaped.class_id("caf\\xe9") == 0


def test_class_names_must_match_the_unets_classes(pipe) -> None:
    """guidance's null class is id `len(class_names)`: a list of another length conditioned on a
    wrong id (or, empty, sampled the null class only)."""
    parts = (pipe.unet, pipe.vae, pipe.schedule)
    with pytest.raises(UserError, match="4 class names for a UNet with 3 classes"):
        LatentDiffusionPipeline(*parts, class_names=["a", "b", "c", "d"], image_size=16)
    assert LatentDiffusionPipeline(*parts, image_size=16).class_names == ["0", "1", "2"]


def test_the_networks_dtype_may_be_named(pipe) -> None:
    parts = copy.deepcopy((pipe.unet, pipe.vae, pipe.schedule))  # the pipeline casts its networks in place
    half = LatentDiffusionPipeline(*parts, class_names=pipe.class_names, image_size=16, dtype="bf16")
    assert half.dtype == torch.bfloat16 and half.unet.conv_in.weight.dtype == torch.bfloat16
    for bad in ("float8", torch.int32):
        with pytest.raises(UserError, match="dtype must be a floating-point torch dtype or one of fp32"):
            LatentDiffusionPipeline(*parts, class_names=pipe.class_names, image_size=16, dtype=bad)


def test_cli_generate_per_class_files(run_folder, tmp_path) -> None:
    out = tmp_path / "samples"
    assert main(["generate", "--model", str(run_folder), "--steps", "2", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["00000_seed0_class0.png", "00001_seed1_class1.png", "00002_seed2_class2.png", "grid.png"]
    assert main(["generate", "--model", str(run_folder), "--prompt", "x", "--quiet", "--out", str(out)]) == 2


def test_a_job_whose_parts_do_not_fit_together_is_named(pipe) -> None:
    """A mask or strength without init was dropped without a word; seeds and labels of two lengths,
    an empty job and a misshapen init failed inside torch or named a batch the caller never gave."""
    with pytest.raises(UserError, match="a mask needs start latents: pass init"):
        pipe.generate_latents([0], [0], mask=torch.ones(1, 1, 4, 4), **SAMPLING)
    with pytest.raises(UserError, match="strength needs start latents"):
        pipe.generate_latents([0], [0], strength=0.5, **SAMPLING)
    with pytest.raises(UserError, match="1 labels for 2 seeds: give one class id per seed"):
        pipe.generate_latents([0, 1], [0], **SAMPLING)
    with pytest.raises(UserError, match="1 labels for 3 seeds"):
        pipe.generate_uint8([0, 1, 2], [0], batch_size=2, **SAMPLING)
    with pytest.raises(UserError, match="no seeds given"):
        pipe.generate_uint8([], [], **SAMPLING)
    channels, h, w = pipe.latent_shape
    for init in (torch.zeros(3, channels, h, w), torch.zeros(channels, h, w), torch.zeros(1, 3, h, w), np.zeros(3)):
        with pytest.raises(UserError, match=rf"init must be latents \[1 or 2, {channels}, h, w\]"):
            pipe.generate_latents([0, 1], [0, 0], init=init, strength=0.5, **SAMPLING)
    init = torch.zeros(1, channels, h, w)
    with pytest.raises(UserError, match=rf"mask must be \[1, 1, {h}, {w}\] at init's size"):
        pipe.generate_latents([0], [0], init=init, mask=torch.ones(1, 1, h + 1, w), **SAMPLING)
    assert pipe.generate_latents([0, 1], [0, 0], init=init, strength=0.5, **SAMPLING).shape == (2, channels, h, w)


def test_the_guidance_rescale_takes_numpys_and_torchs_numbers(pipe) -> None:
    reference = pipe.generate_uint8([0], [1], cfg=2.5, cfg_rescale=0.5, **SAMPLING)
    for rescale in (np.float32(0.5), torch.tensor(0.5)):
        assert torch.equal(pipe.generate_uint8([0], [1], cfg=2.5, cfg_rescale=rescale, **SAMPLING), reference)
    with pytest.raises(UserError, match="guidance rescale must be in"):
        pipe.generate_uint8([0], [1], cfg=2.5, cfg_rescale=1.5, **SAMPLING)


def test_the_constructor_refuses_parts_that_would_fail_later_or_be_ignored(pipe) -> None:
    """image_size 0 was a conv error at the first generation, a schedule by name an AttributeError,
    prediction "foo" was taken until generate, and a sampler default no sampler takes was ignored."""
    parts, factor = dict(prediction="eps", image_size=16, device="cpu"), pipe.vae.config.downsample_factor
    assert LatentDiffusionPipeline(pipe.unet, pipe.vae, pipe.schedule, **parts).image_size == 16
    for bad, match in ((dict(image_size=0), "image_size must be a positive multiple of the VAE's downsample factor"),
                       (dict(image_size=16 + factor // 2), f"multiple of the VAE's downsample factor {factor}, got"),
                       (dict(image_size=(16, 24)), r"image_size \(square images: one number\) must be a whole number"),
                       (dict(prediction="foo"), "unknown prediction type 'foo'"),
                       (dict(sampler_defaults={"etaa": 0.5}), "sampler_defaults names etaa, which no sampler takes")):
        with pytest.raises(UserError, match=match):
            LatentDiffusionPipeline(pipe.unet, pipe.vae, pipe.schedule, **{**parts, **bad})
    with pytest.raises(UserError, match="schedule must be a NoiseSchedule .* got str"):
        LatentDiffusionPipeline(pipe.unet, pipe.vae, "scaled_linear", **parts)
    assert LatentDiffusionPipeline(pipe.unet, pipe.vae, pipe.schedule, sampler_defaults={"eta": 0.5}, **parts)
