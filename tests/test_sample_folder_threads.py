"""A folder of large samples is decoded on several threads (in order); small ones on one, where
threads only add overhead; a damaged first file is still named in one line."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from ldmkit.errors import UserError
from ldmkit.eval import samples_io
from ldmkit.eval.samples_io import read_sample_folder, sample_filename


def _folder(tmp_path, size: int, n: int = 4):
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    for k, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / sample_filename(k, k))
    return pixels


def test_large_samples_decode_on_several_threads_in_order(tmp_path, monkeypatch):
    pixels = _folder(tmp_path, 128)
    two_at_once = threading.Barrier(2, timeout=20)  # broken (an error) unless two loads overlap
    real_load = samples_io._load_png

    def overlapping(path, channels):
        if path.name.startswith(("00000", "00001")):
            two_at_once.wait()
        return real_load(path, channels)

    monkeypatch.setattr(samples_io, "_load_png", overlapping)
    images = read_sample_folder(tmp_path).images
    for k, p in enumerate(pixels):
        np.testing.assert_array_equal(images[k].permute(1, 2, 0).numpy(), p)


def test_small_samples_decode_on_one_thread(tmp_path, monkeypatch):
    _folder(tmp_path, 16)
    threads = set()
    real_load = samples_io._load_png

    def recorded(path, channels):
        threads.add(threading.current_thread().name)
        return real_load(path, channels)

    monkeypatch.setattr(samples_io, "_load_png", recorded)
    assert read_sample_folder(tmp_path).images.shape == (4, 3, 16, 16)
    assert threads == {threading.current_thread().name}


def test_a_damaged_first_sample_is_named(tmp_path):
    _folder(tmp_path, 16)
    (tmp_path / sample_filename(0, 0)).write_bytes(b"not a png")
    with pytest.raises(UserError, match="00000_seed0.png cannot be read"):
        read_sample_folder(tmp_path)
