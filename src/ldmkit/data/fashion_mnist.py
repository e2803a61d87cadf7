"""Fashion-MNIST (Xiao et al. 2017) from its four IDX files: 28 px greyscale, 10 classes.

Files are looked up in a given folder or in `/usr/share/datasets/fashion-mnist/`, where
Debian's `dataset-fashion-mnist` package installs them (gzipped). val is the t10k split.

Sizing choice: the clothes sit on a black (-1) background, so growing 28 px to a slightly
larger size (30-36 px, even difference, e.g. 32 for a UNet that halves 3 times) pads with
black: that keeps every original pixel sharp and adds nothing the data lacks. Any other
size (smaller, odd difference or far larger) is a bicubic, antialiased resize.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch

from ldmkit.data.batch_transforms import fit_uint8_images, pad_uint8_images, resize_uint8_images, working_bytes
from ldmkit.data.dataset import InMemoryImageDataset
from ldmkit.data.memory import check_fits_in_memory
from ldmkit.errors import UserError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_PAD = 8  # pad at most 4 px a side; beyond that the digits would float in a black frame

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def find_idx_file(folder: Path, name: str) -> Path | None:
    """`name` or `name.gz`; also the `name-with.idx3-ubyte` spelling some mirrors use."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its declared shape."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise UserError(f"Could not read '{path}': {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"'{path}' is not an IDX file (bad magic number).")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"'{path}' is truncated (incomplete IDX header).")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = math.prod(shape)
    if len(data) < header + count * dtype.itemsize:
        raise UserError(f"'{path}' is truncated: its header promises {shape} values.")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)


def _missing_message(folder: Path, missing: list[str], default: bool) -> str:
    where = f"'{folder}'" + (" (the default location)" if default else "")
    return (f"Fashion-MNIST files not found in {where}: missing {', '.join(missing)} (or .gz). "
            "Install them with `apt-get install dataset-fashion-mnist`, or pass "
            "'fashion-mnist:DIR' with a folder holding train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte.")


def read_fashion_mnist(folder: Path, split: str, *, default: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and int64 labels [N] of one split; UserError if unusable."""
    names = FILES[split]
    paths = [find_idx_file(folder, name) for name in names]
    missing = [name for name, path in zip(names, paths) if path is None]
    if missing:
        raise UserError(_missing_message(folder, missing, default))
    images, labels = (read_idx(path) for path in paths)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise UserError(f"'{paths[0]}' should hold uint8 images [N, 28, 28], not {images.dtype} {images.shape}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"'{paths[1]}' has {labels.shape} labels for {len(images)} images.")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise UserError(f"'{paths[1]}' has labels outside 0..{len(CLASS_NAMES) - 1}.")
    return images, labels.astype(np.int64)


def fit_to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Pad with black when slightly larger and evenly so, else resize (module docstring)."""
    margin = size - images.shape[-1]
    if 0 <= margin <= MAX_PAD and margin % 2 == 0:
        return pad_uint8_images(images, size, value=0)
    return resize_uint8_images(images, size)


def load_fashion_mnist_dataset(
    folder: str | None, split: str, *, image_size: int, flip: bool, channels: int
) -> InMemoryImageDataset:
    """Fashion-MNIST from `folder` (default: Debian's location) as an in-memory dataset."""
    root = Path(folder).expanduser() if folder else DEFAULT_DIR
    images, labels = read_fashion_mnist(root, split, default=not folder)
    source = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 1, 28, 28]
    check_fits_in_memory(f"fashion-mnist [{split}]", len(source), channels, image_size,
                         working_bytes=working_bytes(source, image_size, channels),
                         advice="a smaller --image-size (the images are 28 px)")
    return InMemoryImageDataset(
        fit_uint8_images(source, image_size, channels, fit=fit_to_size),
        torch.from_numpy(labels),
        source="fashion-mnist" + (f":{folder}" if folder else ""),
        split=split,
        class_names=CLASS_NAMES,
        channels=channels,
        image_size=image_size,
        flip=flip,
    )
