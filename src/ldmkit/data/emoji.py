"""The embedded "emoji" dataset: 1,911 Noto Emoji images, 64 px RGB on white, 10 classes.

Built once by `scripts/build_emoji_dataset.py` from the npm package
emoji-datasource-google@16.0.0 into `assets/emoji64.npz`; the classes are the Unicode emoji
categories (Activities, Animals & Nature, Flags, ...), and the val split (5% of each class)
is fixed inside the file. Licence: Apache-2.0, see `assets/EMOJI_NOTICE.txt`.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import torch

from ldmkit.data.batch_transforms import fit_uint8_images, working_bytes
from ldmkit.data.dataset import InMemoryImageDataset
from ldmkit.data.memory import check_fits_in_memory

ASSET_NAME = "emoji64.npz"
NATIVE_SIZE = 64


@functools.lru_cache(maxsize=1)
def read_emoji_asset() -> dict[str, np.ndarray]:
    """The arrays of the asset (images, labels, class_names, is_val, unified), read once."""
    asset = resources.files("ldmkit.data").joinpath("assets", ASSET_NAME)
    if not asset.is_file():
        raise RuntimeError(f"This ldmkit install lacks its data asset {ASSET_NAME}; "
                           "rebuild it with scripts/build_emoji_dataset.py.")
    with asset.open("rb") as handle, np.load(handle, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def load_emoji_dataset(split: str, *, image_size: int, flip: bool, channels: int) -> InMemoryImageDataset:
    """The train or val part of the emoji set at `image_size` (bicubic resize if not 64)."""
    arrays = read_emoji_asset()
    keep = arrays["is_val"] if split == "val" else ~arrays["is_val"]
    images = torch.from_numpy(arrays["images"][keep]).permute(0, 3, 1, 2).contiguous()  # [N, 3, 64, 64]
    check_fits_in_memory(f"emoji [{split}]", images.shape[0], channels, image_size,
                         working_bytes=working_bytes(images, image_size, channels),
                         advice=f"a smaller --image-size (the emoji are drawn at {NATIVE_SIZE} px)")
    images = fit_uint8_images(images, image_size, channels)
    return InMemoryImageDataset(
        images,
        torch.from_numpy(arrays["labels"][keep]),
        source="emoji",
        split=split,
        class_names=[str(name) for name in arrays["class_names"]],
        channels=channels,
        image_size=image_size,
        flip=flip,
    )
