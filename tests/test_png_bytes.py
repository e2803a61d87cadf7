"""PNG encoding on several threads keeps the images' order and pixels; the server's result encodes
on the thread that reads it, not on the runner's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ldmkit.data.images import png_bytes


@pytest.mark.parametrize("threads", [1, 4])
def test_png_bytes_are_the_images_in_order(threads):
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (8 + k, 8, 3), dtype=np.uint8) for k in range(9)]  # sizes tell them apart
    files = png_bytes([Image.fromarray(p) for p in pixels], threads=threads)
    assert len(files) == 9
    for p, data in zip(pixels, files):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), p)


def test_a_served_job_is_encoded_when_read(monkeypatch):
    import torch

    from ldmkit.serve.service import GeneratedImages

    calls = []
    monkeypatch.setattr("ldmkit.serve.service.png_bytes", lambda images: calls.append(len(images)) or [b"x"] * 2)
    result = GeneratedImages(images=torch.zeros(2, 3, 4, 4, dtype=torch.uint8), seeds=[0, 1], classes=[None, None],
                             labels=[None, None], seconds=0.1)
    assert calls == []  # made without encoding: the runner thread is free for the next job
    assert result.pngs == [b"x", b"x"] and result.pngs == [b"x", b"x"] and calls == [2]  # once, when read
