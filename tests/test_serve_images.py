"""`ldm serve` from a start image: img2img and inpainting through the JSON API give the images
`ldm generate --init-image [--mask] [--strength]` writes, and a bad image is a 400 that says
what is wrong with it."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_http import post
from tiny_models import save_tiny_class_model

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.serve import GenerationService, make_server

CLASSES = ["red", "green", "blue"]
SIZE = 16  # the tiny model's image size


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_tiny_class_model(tmp_path_factory.mktemp("model") / "model.safetensors", CLASSES)


@pytest.fixture(scope="module")
def service(model_file) -> GenerationService:
    return GenerationService(LatentDiffusionPipeline.from_pretrained(model_file, device="cpu"), name="tiny")


@pytest.fixture(scope="module")
def url(service):
    server = make_server(service, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode("ascii")


def photo(size: int = SIZE, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def left_half_mask(size: int = SIZE) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 2] = 255
    return Image.fromarray(mask)


def served_arrays(result: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))) for src in result["images"]]


@pytest.mark.parametrize("with_mask, strength", [(False, 0.6), (True, None)])
def test_served_images_are_ldm_generates_from_the_same_start(url, model_file, tmp_path, with_mask, strength):
    start, mask = photo(), left_half_mask()
    (tmp_path / "start.png").write_bytes(png(start))
    (tmp_path / "mask.png").write_bytes(png(mask))
    fields = {"n": 2, "class": "green", "steps": 3, "seed": 5, "init_image": data_url(start)}
    flags = ["--init-image", str(tmp_path / "start.png")]
    if with_mask:
        fields["mask"], flags = data_url(mask), flags + ["--mask", str(tmp_path / "mask.png")]
    if strength is not None:
        fields["strength"], flags = strength, flags + ["--strength", str(strength)]
    status, result = post(url, fields)
    assert status == 200, result
    out = tmp_path / "out"
    assert main(["generate", "--model", str(model_file), "--class", "green", "--n", "2", "--steps", "3",
                 "--seed", "5", "--out", str(out), "--quiet", *flags]) == 0
    served = served_arrays(result)
    for k, (image, seed) in enumerate(zip(served, result["seeds"])):
        assert np.array_equal(image, np.asarray(Image.open(out / f"{k:05d}_seed{seed}_class1.png")))
    if with_mask:  # the kept (black) half stays close to the start image; the redrawn half does not
        kept = np.abs(served[0][:, SIZE // 2:].astype(int) - np.asarray(start)[:, SIZE // 2:]).mean()
        redrawn = np.abs(served[0][:, : SIZE // 2].astype(int) - np.asarray(start)[:, : SIZE // 2]).mean()
        assert kept < redrawn


def test_strength_defaults_as_ldm_generates(service):
    start = data_url(photo())
    assert service.prepare({"init_image": start}).sampling["strength"] == 0.75
    assert service.prepare({"init_image": start, "mask": data_url(left_half_mask())}).sampling["strength"] == 1.0
    assert service.prepare({"init_image": start, "strength": 0.3}).sampling["strength"] == 0.3
    assert "strength" not in service.prepare({}).sampling  # no start image: plain generation


def _truncated_png() -> str:
    return base64.b64encode(png(photo())[:-40]).decode("ascii")


@pytest.mark.parametrize("fields, message", [
    ({"init_image": 123}, "init_image must be a base64 PNG, JPEG or WebP image"),
    ({"init_image": "data:image/png,abc"}, "init_image must be a base64 data URL"),
    ({"init_image": "not base64!"}, "init_image is not valid base64"),
    ({"init_image": base64.b64encode(b"hello, world").decode()}, "init_image is not a PNG, JPEG or WebP image"),
    ({"init_image": data_url(photo(8))}, "init_image is 8x8 px; this model takes 16x16"),
    ({"init_image": _truncated_png()}, "init_image could not be decoded"),
    ({"mask": data_url(left_half_mask())}, "mask and strength need an init_image"),
    ({"strength": 0.5}, "mask and strength need an init_image"),
    ({"init_image": data_url(photo()), "strength": 0}, "strength must be a number in (0, 1]"),
    ({"init_image": data_url(photo()), "strength": "0.5"}, "strength must be a number in (0, 1]"),
    ({"init_image": data_url(photo()), "mask": data_url(left_half_mask(8))}, "mask is 8x8 px"),
])
def test_bad_start_images_are_400s_that_say_what_is_wrong(url, fields, message):
    status, result = post(url, {"n": 1, "steps": 1, **fields})
    assert status == 400 and message in result["error"], result


def test_an_image_claiming_too_many_pixels_is_refused_before_decoding(url, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses past twice this: 16x16 now counts as a bomb
    status, result = post(url, {"n": 1, "steps": 1, "init_image": data_url(photo())})
    assert status == 400 and "claims too many pixels" in result["error"], result


def test_the_python_service_raises_the_same_errors(service):
    with pytest.raises(UserError, match="this model takes 16x16"):
        service.generate({"init_image": data_url(photo(32))})
