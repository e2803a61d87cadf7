"""img2img (SDEdit) and inpainting (latent blending) through the pipeline, for a class-conditional
ldmkit model: strength 1 is plain generation, strength s runs the last s of the steps, a zero mask
keeps the init latents, and bad inputs are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.pipeline import LatentDiffusionPipeline
from tiny_sd import save_class_model

SAMPLING = dict(sampler="ddim", steps=6)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_class_model(tmp_path_factory.mktemp("class_model") / "model.safetensors")


@pytest.fixture(scope="module")
def pipe(model_file: Path) -> LatentDiffusionPipeline:
    return LatentDiffusionPipeline.from_pretrained(model_file, device="cpu")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("images") / "init.png"
    Image.fromarray(pixels).save(path)
    return path


def _mask(path: Path, white_columns: slice, size: tuple[int, int] = (16, 16)) -> Path:
    pixels = np.zeros(size[::-1], dtype=np.uint8)
    pixels[:, white_columns] = 255
    Image.fromarray(pixels).save(path)
    return path


def _arrays(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


def test_strength_one_is_the_plain_generation_path(pipe, image_file) -> None:
    plain = pipe.generate(2, classes=["green"], seed=4, **SAMPLING)
    varied = pipe.img2img(image_file, strength=1.0, n=2, classes=["green"], seed=4, **SAMPLING)
    assert np.array_equal(_arrays(plain), _arrays(varied))


def test_strength_runs_the_last_part_of_the_steps(pipe, image_file) -> None:
    init = pipe.encode_image(image_file)
    steps = []
    out = pipe.generate_latents([0], [1], init=init, strength=0.5, callback=lambda i, t, x: steps.append(t), **SAMPLING)
    assert len(steps) == 3 and steps[0] < 999  # int(6 * 0.5) steps, starting part-way down
    plain = pipe.generate_latents([0], [1], **SAMPLING)
    assert (out - plain).abs().max() > 1e-3 and (out - init).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m"])
def test_zero_mask_keeps_the_init_latents(pipe, image_file, tmp_path, sampler) -> None:
    init = pipe.encode_image(image_file)
    mask = pipe.prepare_mask(_mask(tmp_path / "m.png", slice(0, 0)), size=(16, 16))
    assert mask.shape == (1, 1, 8, 8) and mask.sum() == 0
    out = pipe.generate_latents([0, 1], [2, 2], init=init, mask=mask, sampler=sampler, steps=5)
    assert torch.equal(out, init.expand_as(out))


def test_inpainting_regenerates_only_the_white_part(pipe, image_file, tmp_path) -> None:
    init = pipe.encode_image(image_file)
    # One white pixel column at x = 9 marks latent column 4 (each latent pixel covers 2x2 pixels).
    mask = pipe.prepare_mask(_mask(tmp_path / "m.png", slice(9, 10)), size=(16, 16))
    assert mask[0, 0, 0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    out = pipe.generate_latents([0], [0], init=init, mask=mask, **SAMPLING)
    keep = mask.expand_as(out) == 0
    assert torch.equal(out[keep], init.expand_as(out)[keep])
    assert (out[~keep] - init.expand_as(out)[~keep]).abs().max() > 1e-3
    images = pipe.inpaint(image_file, tmp_path / "m.png", classes=[0], **SAMPLING)
    assert len(images) == 1 and images[0].size == (16, 16)


def test_bad_inputs_are_user_errors(pipe, image_file, tmp_path) -> None:
    with pytest.raises(UserError, match="image file not found"):
        pipe.img2img(tmp_path / "missing.png", classes=[0])
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(UserError, match="cannot read image"):
        pipe.img2img(tmp_path / "junk.png", classes=[0])
    with pytest.raises(UserError, match="mask size 8x16 differs"):
        pipe.inpaint(image_file, _mask(tmp_path / "small.png", slice(0, 2), size=(8, 16)), classes=[0])
    for strength in (0.0, 1.5, -0.2):
        with pytest.raises(UserError, match=r"strength must be in \(0, 1\]"):
            pipe.img2img(image_file, strength=strength, classes=[0], **SAMPLING)
    Image.new("RGB", (18, 16)).save(tmp_path / "odd.png")
    with pytest.raises(UserError, match="multiple of 4"):
        pipe.img2img(tmp_path / "odd.png", classes=[0])


def test_cli_img2img_and_inpaint_write_images(model_file, image_file, tmp_path) -> None:
    out = tmp_path / "img2img"
    args = ["generate", "--model", str(model_file), "--init-image", str(image_file), "--class", "red",
            "--n", "2", "--steps", "3", "--device", "cpu", "--quiet"]
    assert main([*args, "--strength", "0.5", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000_seed0_class0.png", "00001_seed1_class0.png", "grid.png"]
    mask = _mask(tmp_path / "mask.png", slice(0, 8))
    assert main([*args, "--mask", str(mask), "--out", str(tmp_path / "inpaint")]) == 0
    assert len(list((tmp_path / "inpaint").glob("*_class0.png"))) == 2
    assert main(["generate", "--model", str(model_file), "--mask", str(mask), "--quiet"]) == 2  # no --init-image


def test_cli_fit_scales_and_crops_the_start_image_as_training_did(model_file, pipe, tmp_path) -> None:
    """A 42x26 photo (not a multiple of 4) is refused as is, and with --fit becomes the centre
    square scaled to 16x16: the same images as the Python API given that square."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (26, 42, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    mask = np.zeros((26, 42), dtype=np.uint8)
    mask[:, :21] = 255
    Image.fromarray(mask).save(tmp_path / "photo_mask.png")
    args = ["generate", "--model", str(model_file), "--init-image", str(tmp_path / "photo.png"), "--class", "red",
            "--n", "2", "--steps", "3", "--sampler", "ddim", "--device", "cpu", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "as_is")]) == 2  # 42x26: "must be a multiple of 4 ... --fit"
    assert main([*args, "--fit", "--strength", "0.5", "--out", str(tmp_path / "fit")]) == 0
    square = pipe.fit_image(tmp_path / "photo.png")
    assert square.size == (16, 16)
    expected = pipe.img2img(square, strength=0.5, classes=["red"], n=2, sampler="ddim", steps=3)
    for k, image in enumerate(expected):
        written = Image.open(tmp_path / "fit" / f"0000{k}_seed{k}_class0.png")
        assert np.array_equal(np.asarray(written), np.asarray(image))
    assert main([*args, "--fit", "--mask", str(tmp_path / "photo_mask.png"), "--out", str(tmp_path / "in")]) == 0
    Image.new("L", (16, 16)).save(tmp_path / "small_mask.png")
    assert main([*args, "--fit", "--mask", str(tmp_path / "small_mask.png"), "--out", str(tmp_path / "x")]) == 2
    assert main(["generate", "--model", str(model_file), "--fit", "--quiet"]) == 2  # --fit without --init-image


def test_the_size_error_names_the_way_out(pipe, tmp_path) -> None:
    Image.new("RGB", (18, 16)).save(tmp_path / "odd.png")
    with pytest.raises(UserError, match=r"fit it to the model's 16x16 \(`ldm generate --fit`"):
        pipe.img2img(tmp_path / "odd.png", classes=[0])


def test_a_strength_that_runs_no_step_is_refused(pipe, image_file) -> None:
    """0.1 of 5 steps ran none: the start image came back through the autoencoder as if generated."""
    with pytest.raises(UserError, match=r"runs no step .* at least 0.2, or the steps"):
        pipe.img2img(image_file, strength=0.1, classes=[0], steps=5, sampler="ddim")
    assert len(pipe.img2img(image_file, strength=0.2, classes=[0], steps=5, sampler="ddim")) == 1
