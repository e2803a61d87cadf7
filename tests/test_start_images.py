"""Start images and masks read as the training data is read (a user-testing report): 16-bit masks
and images scaled, not clipped (a dark-grey 16-bit mask regenerated everything), photos upright by
their EXIF orientation (a mask drawn on the photo as shown was refused, and one drawn on the stored
pixels regenerated a rotated area), and the Python arguments numpy gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from test_img2img_inpaint import SAMPLING, image_file, model_file, pipe  # noqa: F401 (fixtures)

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.pipeline_args import open_image


def test_a_sixteen_bit_mask_is_scaled_not_clipped(pipe, tmp_path):  # noqa: F811
    levels = np.full((16, 16), 20000, np.uint16)  # dark grey: keep
    levels[:, 8:] = 65535  # white: regenerate
    Image.fromarray(levels).save(tmp_path / "mask16.png")
    mask = pipe.prepare_mask(tmp_path / "mask16.png", size=(16, 16))  # [1, 1, h, w] at latent resolution
    half = mask.shape[-1] // 2
    assert mask[..., :half].sum() == 0 and bool((mask[..., half:] == 1).all())  # was all ones


def test_a_sixteen_bit_start_image_encodes_as_its_eight_bit_copy(pipe, tmp_path):  # noqa: F811
    ramp = np.linspace(0, 255, 16).round().astype(np.uint8)[None].repeat(16, 0)
    Image.fromarray(ramp.astype(np.uint16) * 257).save(tmp_path / "ramp16.png")
    Image.fromarray(ramp).save(tmp_path / "ramp8.png")
    assert torch.allclose(pipe.encode_image(tmp_path / "ramp16.png"), pipe.encode_image(tmp_path / "ramp8.png"))


def test_a_photo_is_read_upright(tmp_path):
    stored = Image.new("RGB", (32, 16), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to show
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    (tmp_path / "photo.jpg").write_bytes(buffer.getvalue())
    assert open_image(tmp_path / "photo.jpg").size == (16, 32)
    assert open_image(Image.open(tmp_path / "photo.jpg")).size == (16, 32)


def test_python_arguments_of_numpy_and_none(pipe, image_file):  # noqa: F811
    one = pipe.img2img(image_file, np.float32(0.5), classes=[0], **SAMPLING)
    assert len(one) == 1 and np.array_equal(np.asarray(one[0]), np.asarray(
        pipe.img2img(image_file, 0.5, classes=[0], **SAMPLING)[0]))
    assert len(pipe.generate(1, classes=[0], negative_prompt=None, **SAMPLING)) == 1
    with pytest.raises(UserError, match="the image is 0x0: it has no pixels"):
        pipe.img2img(Image.new("RGB", (0, 0)), classes=[0], **SAMPLING)


def test_a_bad_strength_is_refused_before_the_output_folder_is_made(model_file, image_file, tmp_path, capsys):  # noqa: F811
    for strength in ("0", "1.5", "nan"):
        assert main(["generate", "--model", str(model_file), "--init-image", str(image_file), "--strength", strength,
                     "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")]) == 2
        assert "--strength must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_white_shape_on_a_transparent_layer_paints_the_shape_only(pipe, tmp_path, mode):  # noqa: F811
    """A regression of this session's 16-bit change: transparency went on white, so all was repainted."""
    pixels = np.zeros((16, 16, 4), np.uint8)  # transparent black
    pixels[:, 8:] = 255  # opaque white
    Image.fromarray(pixels, "RGBA").convert(mode).save(tmp_path / "mask.png")
    mask = pipe.prepare_mask(tmp_path / "mask.png", size=(16, 16))
    half = mask.shape[-1] // 2
    assert mask[..., :half].sum() == 0 and bool((mask[..., half:] == 1).all())
