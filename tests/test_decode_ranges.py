"""Grey images deeper than 8 bits reach 0..255 by their range, never clipped (data/decode.py's rules).

Files are written and read back through Pillow, so the modes are the ones a user's TIFFs and PNGs
arrive in: `I;16` (16-bit), `I` (32-bit integer TIFF), `F` (32-bit float TIFF).
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ldmkit.data.decode import to_rgb


def _read_back(values: np.ndarray, tmp_path, name: str) -> Image.Image:
    Image.fromarray(values).save(tmp_path / name)
    return Image.open(tmp_path / name)


def _levels(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(to_rgb(image))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # grey stays grey
    return rgb[..., 0].astype(int)


RAMP = np.array([[0, 64, 128, 255]], dtype=np.float64)  # the 8-bit levels each case should land on


@pytest.mark.parametrize(("name", "values", "mode"), [
    ("sixteen.tif", (RAMP * 257).astype(np.uint16), "I;16"),
    ("int32.tif", (RAMP * (2**31 - 1) / 255).astype(np.int32), "I"),  # beyond 16 bits: its own range
    ("unit.tif", (RAMP / 255).astype(np.float32), "F"),  # float in [0, 1]
    ("byte.tif", RAMP.astype(np.float32), "F"),  # float in [0, 255]
    ("wide.tif", (RAMP * 1000 / 255).astype(np.float32), "F"),  # float in [0, 1000]: its own range
    ("signed.tif", (RAMP / 127.5 - 1).astype(np.float32), "F"),  # float in [-1, 1]: its own range
])
def test_deep_grey_images_keep_their_levels(tmp_path, name, values, mode):
    image = _read_back(values, tmp_path, name)
    assert image.mode == mode
    np.testing.assert_allclose(_levels(image), RAMP[0][None], atol=1)


def test_an_int32_image_within_sixteen_bits_reads_as_sixteen_bit(tmp_path):
    image = _read_back(np.array([[0, 257 * 100, 65535]], dtype=np.int32), tmp_path, "small.tif")
    assert image.mode == "I"
    assert _levels(image).tolist() == [[0, 100, 255]]


def test_nan_reads_as_zero_and_a_flat_image_as_black(tmp_path):
    image = _read_back(np.array([[np.nan, 0.5, 1.0]], dtype=np.float32), tmp_path, "nan.tif")
    assert _levels(image).tolist() == [[0, 128, 255]]
    flat = _read_back(np.full((2, 2), -3.0, dtype=np.float32), tmp_path, "flat.tif")
    assert (_levels(flat) == 0).all()
