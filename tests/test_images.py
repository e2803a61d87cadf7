"""Model outputs to pixels: to_uint8, to_pil, make_grid, atomic save_png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.data import make_grid, save_png, to_pil, to_uint8


def test_to_uint8_maps_range_rounds_and_clamps() -> None:
    values = torch.tensor([-1.0, 0.0, 1.0, -3.0, 2.0, 0.5])
    assert to_uint8(values).tolist() == [0, 128, 255, 0, 255, 191]
    already = torch.tensor([7, 200], dtype=torch.uint8)
    assert to_uint8(already) is already


def test_to_pil_modes_and_sizes() -> None:
    gray = torch.full((2, 1, 3, 5), -1.0)
    pictures = to_pil(gray)
    assert len(pictures) == 2 and pictures[0].mode == "L" and pictures[0].size == (5, 3)
    colour = torch.zeros(3, 4, 6)
    colour[0] = 1.0  # red
    (picture,) = to_pil(colour)
    assert picture.mode == "RGB" and picture.getpixel((0, 0)) == (255, 128, 128)
    with pytest.raises(ValueError):
        to_pil(torch.zeros(1, 2, 4, 4))


def test_make_grid_places_images_row_by_row() -> None:
    images = torch.stack([torch.full((3, 4, 6), -1.0 + 0.4 * k) for k in range(5)])  # H=4, W=6
    grid = make_grid(images, nrow=3, padding=2)
    assert grid.size == (3 * (6 + 2) + 2, 2 * (4 + 2) + 2)
    pixels = np.asarray(grid)
    expected = to_uint8(images[:, 0, 0, 0]).tolist()
    for k in range(5):
        row, column = divmod(k, 3)
        top, left = 2 + row * 6, 2 + column * 8
        assert (pixels[top : top + 4, left : left + 6] == expected[k]).all()
    assert (pixels[0] == 255).all() and (pixels[:, 0] == 255).all(), "white padding"
    assert (pixels[8:12, 18:24] == 255).all(), "the missing sixth cell stays background"
    assert make_grid(to_pil(images), nrow=5).size == (5 * 8 + 2, 4 + 4)


def test_save_png_is_atomic_and_round_trips(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "out.png"
    first = Image.new("RGB", (4, 4), (10, 20, 30))
    assert save_png(first, target) == target
    save_png(torch.ones(1, 3, 5, 5), target)  # overwrite, from a tensor
    with Image.open(target) as reloaded:
        assert reloaded.size == (5, 5) and reloaded.getpixel((0, 0)) == (255, 255, 255)
    assert [p.name for p in target.parent.iterdir()] == ["out.png"], "no temporary file left"
    with pytest.raises(ValueError):
        save_png(torch.zeros(2, 3, 4, 4), tmp_path / "two.png")
    assert not (tmp_path / "two.png").exists()


def test_atomic_write_text_replaces_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    from ldmkit import atomic

    target = tmp_path / "deep" / "report.json"
    atomic.atomic_write_text(target, '{"old": "é"}')
    assert target.read_text(encoding="utf-8") == '{"old": "é"}'

    def power_cut(src, dst):
        raise KeyboardInterrupt  # between the temporary file and the rename

    monkeypatch.setattr(atomic.os, "replace", power_cut)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write_text(target, '{"new": 1}')
    assert target.read_text(encoding="utf-8") == '{"old": "é"}'
    assert [p.name for p in target.parent.iterdir()] == ["report.json"], "no temporary file left"


def test_a_failed_atomic_write_names_the_callers_file_not_the_temporary_one(tmp_path: Path) -> None:
    """A full disk while the temporary file is written comes out as the same error for the file the
    caller named (what `ldm` prints), not for `.name.PID.tmp`; errors of other files pass as they are."""
    import errno

    from ldmkit.atomic import atomic_save

    def disk_full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    target = tmp_path / "report.json"
    with pytest.raises(OSError) as caught:
        atomic_save(target, disk_full)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    assert list(tmp_path.iterdir()) == []

    def missing_source(tmp: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/elsewhere/input.bin")

    with pytest.raises(FileNotFoundError) as caught:
        atomic_save(target, missing_source)
    assert caught.value.filename == "/elsewhere/input.bin"
