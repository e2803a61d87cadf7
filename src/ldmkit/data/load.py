"""`load_image_dataset`: the one entry point from a `--data` string to an `ImageDataset`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ldmkit.data.dataset import ImageDataset
from ldmkit.data.emoji import load_emoji_dataset
from ldmkit.data.fashion_mnist import load_fashion_mnist_dataset
from ldmkit.data.folder import load_folder_dataset
from ldmkit.errors import UserError

SPLITS = ("train", "val")
FASHION_MNIST_PREFIX = "fashion-mnist"


def _check_arguments(split: str, image_size: int, channels: int | None, val_fraction: float) -> None:
    if split not in SPLITS:
        raise UserError(f"Unknown split {split!r}: use 'train' or 'val'.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}.")
    if channels not in (None, 1, 3):
        raise UserError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}.")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction!r}.")


def is_builtin_source(source: str | os.PathLike) -> bool:
    """Whether `source` names a built-in dataset ("emoji", "fashion-mnist[:DIR]") rather than
    a folder of images (a folder of a built-in's name must be written `./emoji`)."""
    name = os.fspath(source)
    return name == "emoji" or name == FASHION_MNIST_PREFIX or name.startswith(FASHION_MNIST_PREFIX + ":")


def _warn_if_folder_hidden_by_builtin(name: str) -> None:
    """Built-in names win over a folder of the same name (documented), but a folder of that
    name here is most likely what the user meant: say which one is used and how to get the other."""
    if not Path(name).is_dir():
        return
    hint = f" (or --data {name}:./{name} if it holds the IDX files)" if name == FASHION_MNIST_PREFIX else ""
    # stacklevel 2, in load_image_dataset: one place for the train and val loads, so it shows once.
    warnings.warn(f"using the built-in {name} dataset; for the folder ./{name} write --data ./{name}{hint}.",
                  stacklevel=2)


def load_image_dataset(
    source: str | os.PathLike,
    split: str = "train",
    *,
    image_size: int,
    flip: bool = True,
    channels: int | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> ImageDataset:
    """Load the `split` ("train" or "val") of a dataset at `image_size` x `image_size`.

    `source` is one of

    - `"emoji"`: the embedded Noto Emoji set (1,911 images, 64 px RGB, 10 classes);
    - `"fashion-mnist"` or `"fashion-mnist:DIR"`: the four IDX files (optionally .gz) from DIR
      or Debian's `/usr/share/datasets/fashion-mnist/`; 1 channel, 10 classes; val = t10k;
    - a folder: `DIR/train` and `DIR/val`, or DIR alone (then `val_fraction` of each class is
      held out, chosen by `seed`). One subfolder per class gives labels; a flat folder is
      unconditional. Images are resized (shorter side) and centre-cropped. Built-in names
      win over a folder of the same name (with a warning when one exists in the current
      folder): write `./emoji` to mean the folder.

    `flip` turns on random horizontal flips, for the train split only. `channels` (1 or 3)
    converts the images; None keeps the source's own (3 for folders and emoji, 1 for
    Fashion-MNIST). Items are `(float32 [C, S, S] in [-1, 1], label)`, label -1 when
    unconditional. Any problem with the source raises `UserError` before work starts.
    """
    _check_arguments(split, image_size, channels, val_fraction)
    flip = bool(flip) and split == "train"
    name = os.fspath(source)
    if not name.strip():  # Path("") is the current folder: a whole home directory was read as images
        raise UserError("the data source is empty: give an image folder, 'emoji' or 'fashion-mnist'")
    if name in ("emoji", FASHION_MNIST_PREFIX):
        _warn_if_folder_hidden_by_builtin(name)
    if name == "emoji":
        return load_emoji_dataset(split, image_size=image_size, flip=flip, channels=channels or 3)
    if name == FASHION_MNIST_PREFIX or name.startswith(FASHION_MNIST_PREFIX + ":"):
        folder = name[len(FASHION_MNIST_PREFIX) + 1 :] or None
        return load_fashion_mnist_dataset(folder, split, image_size=image_size, flip=flip, channels=channels or 1)
    return load_folder_dataset(Path(name).expanduser(), split, image_size=image_size, flip=flip,
                               channels=channels or 3, val_fraction=val_fraction, seed=seed)
