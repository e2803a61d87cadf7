"""In-memory datasets at large sizes: resized chunk by chunk, and refused up front when the
stored uint8 set would not fit in memory (rather than killed by the kernel mid-load)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ldmkit.data import batch_transforms, load_image_dataset, memory
from ldmkit.data.batch_transforms import convert_channels, fit_uint8_images, resize_uint8_images
from ldmkit.errors import UserError
from test_data_builtin import fake_fashion_mnist

REAL_INTERPOLATE = F.interpolate  # taken before any test's spy replaces it


def one_shot_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """The whole batch in one float32 interpolate: what loading did before chunking."""
    out = REAL_INTERPOLATE(images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


@pytest.fixture
def interpolate_calls(monkeypatch) -> list[tuple[int, int]]:
    """(input float bytes + output float bytes, batch) of every F.interpolate call."""
    calls = []

    def spy(input, *args, **kwargs):
        out = REAL_INTERPOLATE(input, *args, **kwargs)
        calls.append((4 * (input.numel() + out.numel()), input.shape[0]))
        return out

    monkeypatch.setattr(F, "interpolate", spy)
    return calls


def test_resize_works_in_small_chunks_with_the_same_pixels(monkeypatch, interpolate_calls) -> None:
    images = torch.randint(0, 256, (40, 3, 24, 24), dtype=torch.uint8)
    expected = one_shot_resize(images, 50)
    per_image = 4 * 3 * (24 * 24 + 50 * 50)
    monkeypatch.setattr(batch_transforms, "CHUNK_BYTES", 6 * per_image)
    assert torch.equal(resize_uint8_images(images, 50), expected)
    assert len(interpolate_calls) == 7  # 40 images, 6 at a time
    assert max(size for size, _ in interpolate_calls) <= 6 * per_image


def test_channel_conversion_happens_per_chunk(monkeypatch, interpolate_calls) -> None:
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    expected = convert_channels(one_shot_resize(images, 20), 1)
    monkeypatch.setattr(batch_transforms, "CHUNK_BYTES", 3 * 4 * 3 * (16 * 16 + 20 * 20))
    out = fit_uint8_images(images, 20, 1)
    assert out.shape == (10, 1, 20, 20) and torch.equal(out, expected)
    assert [batch for _, batch in interpolate_calls] == [3, 3, 3, 1]


def test_emoji_resize_is_one_image_at_a_time_when_images_are_huge(monkeypatch, interpolate_calls) -> None:
    monkeypatch.setattr(batch_transforms, "CHUNK_BYTES", 1)  # smaller than one image: one per chunk
    dataset = load_image_dataset("emoji", "val", image_size=40)
    assert {batch for _, batch in interpolate_calls} == {1} and len(interpolate_calls) == len(dataset)


def test_emoji_too_large_for_memory_is_refused_before_resizing(monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 10**9)

    def never(*args, **kwargs):
        raise AssertionError("resized before the memory check")

    monkeypatch.setattr("ldmkit.data.emoji.fit_uint8_images", never)
    with pytest.raises(UserError, match=r"emoji \[train\] at 1000 px would take 5\.4 GB of memory "
                                        r"\(1815 images of 3x1000x1000 bytes\), more than the 2\.0 GB.*--image-size"):
        load_image_dataset("emoji", "train", image_size=1000)


def test_fashion_mnist_too_large_for_memory_is_refused(tmp_path: Path, monkeypatch) -> None:
    fake_fashion_mnist(tmp_path, compress=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 10**6)
    with pytest.raises(UserError, match=r"fashion-mnist \[train\] at 300 px would take 3\.2 MB"):
        load_image_dataset(f"fashion-mnist:{tmp_path}", "train", image_size=300, channels=3)
    assert len(load_image_dataset(f"fashion-mnist:{tmp_path}", "train", image_size=32)) == 12  # 12 KB fits


def test_unknown_memory_never_refuses(monkeypatch) -> None:
    for source in ("_system_available", "_cgroup_headroom", "_address_space_headroom"):
        monkeypatch.setattr(memory, source, lambda: None)
    assert memory.available_memory() is None
    memory.check_fits_in_memory("x", 10**9, 3, 10**4)  # a petabyte, and no refusal


def test_available_memory_takes_the_tightest_known_limit(monkeypatch) -> None:
    monkeypatch.setattr(memory, "_system_available", lambda: 8 * 10**9)
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: None)
    monkeypatch.setattr(memory, "_address_space_headroom", lambda: 3 * 10**9)
    assert memory.available_memory() == 3 * 10**9


def test_this_machine_reports_some_memory() -> None:
    available = memory.available_memory()
    assert available is None or available > 0


def test_each_torchrun_process_on_the_machine_is_counted_as_holding_a_copy(monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 10 * 10**6)
    memory.check_fits_in_memory("x", 3, 1, 1000)  # 3 MB: fits once
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc_per_node 4: 12 MB
    with pytest.raises(UserError, match=r"3\.0 MB of memory in each of the 4 processes on this machine .* more than "
                                        r"the 10\.0 MB available here: use .* or fewer processes per machine\."):
        memory.check_fits_in_memory("x", 3, 1, 1000)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    memory.check_fits_in_memory("x", 3, 1, 1000)
