"""Built-in datasets: the embedded emoji set and Fashion-MNIST from (tiny, test-made) IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ldmkit.data import load_image_dataset
from ldmkit.errors import UserError

# Unicode's 10 emoji categories; "Component" holds the 5 skin-tone swatches.
EMOJI_CLASSES = ["Activities", "Animals & Nature", "Component", "Flags", "Food & Drink", "Objects",
                 "People & Body", "Smileys & Emotion", "Symbols", "Travel & Places"]


# -- emoji ---------------------------------------------------------------------------------

def test_emoji_loads_with_fixed_split_and_classes() -> None:
    train = load_image_dataset("emoji", image_size=64)
    val = load_image_dataset("emoji", "val", image_size=64)
    assert len(train) + len(val) == 1911 and len(val) == 96
    assert train.class_names == EMOJI_CLASSES == val.class_names and train.num_classes == 10
    assert train.channels == 3 and train.flip and not val.flip
    image, label = train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= label < 10
    assert image.min() >= -1 and image.max() <= 1
    labels = train.as_label_tensor()
    counts = labels.bincount(minlength=10)
    assert counts[2] == 4 and counts[torch.arange(10) != 2].min() > 50  # Component: 5 swatches, 1 in val
    assert val.as_label_tensor().unique().numel() == 10  # every class has at least one val image


def test_emoji_backgrounds_are_white() -> None:
    images = load_image_dataset("emoji", image_size=64).as_uint8_tensor()
    assert images.shape == (1815, 3, 64, 64) and images.dtype == torch.uint8
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # [N, 3, 4]
    white_corners = (corners == 255).all(dim=1).all(dim=1)
    assert white_corners.float().mean() > 0.8, "transparent pixels must be composited on white"


def test_emoji_resizes_and_converts_channels() -> None:
    small = load_image_dataset("emoji", "val", image_size=32, channels=1)
    assert small.as_uint8_tensor().shape == (96, 1, 32, 32) and small[0][0].shape == (1, 32, 32)


# -- Fashion-MNIST ---------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """IDX: two zero bytes, type 0x08 (uint8), ndim, big-endian dims, then the data."""
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def fake_fashion_mnist(folder: Path, compress: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    splits = {"train": ("train", 12), "val": ("t10k", 5)}
    made = {}
    for split, (prefix, count) in splits.items():
        images = rng.integers(1, 256, (count, 28, 28), dtype=np.uint8)  # never 0: padding stands out
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
        made[split] = (images, labels)
    return made


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, compress: bool) -> None:
    made = fake_fashion_mnist(tmp_path, compress)
    for split in ("train", "val"):
        dataset = load_image_dataset(f"fashion-mnist:{tmp_path}", split, image_size=28, flip=False)
        images, labels = made[split]
        assert len(dataset) == len(images) and dataset.channels == 1 and dataset.num_classes == 10
        assert dataset.class_names[0] == "T-shirt/top" and dataset.class_names[9] == "Ankle boot"
        assert torch.equal(dataset.as_uint8_tensor()[:, 0], torch.from_numpy(images))
        assert dataset.as_label_tensor().tolist() == labels.tolist()
        image, label = dataset[3]
        assert image.shape == (1, 28, 28) and label == labels[3]
        assert torch.allclose(image, torch.from_numpy(images[3]).float() / 127.5 - 1)


def test_fashion_mnist_pads_to_32_with_background(tmp_path: Path) -> None:
    images = fake_fashion_mnist(tmp_path, compress=True)["train"][0]
    dataset = load_image_dataset(f"fashion-mnist:{tmp_path}", image_size=32, flip=False)
    image = dataset[0][0]
    assert image.shape == (1, 32, 32)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(image[0][border] == -1), "padding is the black background"
    assert torch.allclose(image[0, 2:30, 2:30], torch.from_numpy(images[0]).float() / 127.5 - 1)


def test_fashion_mnist_resizes_other_sizes_and_converts_to_rgb(tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path, compress=False)
    dataset = load_image_dataset(f"fashion-mnist:{tmp_path}", image_size=16, channels=3)
    assert dataset.as_uint8_tensor().shape == (12, 3, 16, 16)


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_image_dataset(f"fashion-mnist:{tmp_path / 'nowhere'}", image_size=28)
    fake_fashion_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_image_dataset(f"fashion-mnist:{tmp_path}", "val", image_size=28)


def test_fashion_mnist_corrupt_file_is_user_error(tmp_path: Path) -> None:
    fake_fashion_mnist(tmp_path, compress=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x89PNG not an idx file")
    with pytest.raises(UserError, match="not an IDX file"):
        load_image_dataset(f"fashion-mnist:{tmp_path}", image_size=28)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 12, 28, 28))
    with pytest.raises(UserError, match="truncated"):
        load_image_dataset(f"fashion-mnist:{tmp_path}", image_size=28)
