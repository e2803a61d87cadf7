"""`ImageDataset`: the one dataset type the trainer and evaluators see.

Every source (a folder, the embedded emoji set, Fashion-MNIST) produces images already at
`image_size` as uint8 `[C, S, S]`; this base class does the rest in one place: scaling to
`[-1, 1]`, the random horizontal flip, bulk export for preloading, and a log line.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def seeded_subset(count: int, size: int, seed: int) -> list[int]:
    """`size` of the indices 0..count-1, drawn with `seed` and kept in file order (all of them when
    `size` >= `count`): a folder lists class by class, so its first `size` files are the first classes."""
    if size >= count:
        return list(range(count))
    return sorted(torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].tolist())


class ImageDataset(Dataset):
    """Images of one size and channel count with optional class labels.

    `dataset[i] -> (image, label)`: `image` is float32 `[C, H, W]` in `[-1, 1]`, `label` an
    int in `[0, num_classes)`, or `-1` when the dataset is unconditional (no classes).

    Subclasses implement `__len__` and `load_uint8(index)`.
    """

    def __init__(
        self,
        *,
        source: str,
        split: str,
        class_names: list[str],
        channels: int,
        image_size: int,
        flip: bool,
        note: str = "",
    ) -> None:
        self.source = source
        self.note = note  # how the split was made, where the log should say it (a held-out val)
        self.split = split
        self.class_names = list(class_names)
        self.channels = channels
        self.image_size = image_size
        # A horizontal mirror is a valid image of the same class for natural photos and
        # emoji alike, and doubles the effective data; val sets never flip (see loaders).
        self.flip = flip

    # -- what subclasses provide ---------------------------------------------------------

    def __len__(self) -> int:
        raise NotImplementedError

    def load_uint8(self, index: int) -> tuple[torch.Tensor, int]:
        """Image `index` as uint8 `[C, S, S]` (never flipped) and its label."""
        raise NotImplementedError

    # -- shared behaviour -----------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 for an unconditional dataset."""
        return len(self.class_names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[int(index)]  # IndexError out of range, negatives allowed
        image, label = self.load_uint8(index)
        image = image.to(torch.float32).div_(127.5).sub_(1.0)  # [0, 255] -> [-1, 1]
        if self.flip and torch.rand(()).item() < 0.5:
            image = image.flip(-1)
        return image, label

    def as_uint8_tensor(self) -> torch.Tensor:
        """All images, unflipped, as one uint8 tensor `[N, C, S, S]`.

        Instant for the built-in datasets (held in memory); a folder decodes every file.
        Meant for preloading small datasets to the GPU; apply `.flip` there yourself.
        """
        if len(self) == 0:
            return torch.empty(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        return torch.stack([self.load_uint8(index)[0] for index in range(len(self))])

    def as_label_tensor(self) -> torch.Tensor:
        """All labels as int64 `[N]` (all `-1` when unconditional), aligned with `as_uint8_tensor`."""
        return torch.tensor([self.load_uint8(index)[1] for index in range(len(self))], dtype=torch.int64)

    def describe(self) -> str:
        """One line for logs, e.g. `emoji [train]: 1815 images, 3x64x64, 10 classes, random flip`."""
        classes = _count(self.num_classes, "class", "classes") if self.num_classes else "unconditional"
        flip = ", random flip" if self.flip else ""
        size = f"{self.channels}x{self.image_size}x{self.image_size}"
        note = f" ({self.note})" if self.note else ""
        return f"{self.source} [{self.split}]: {_count(len(self), 'image', 'images')}, {size}, {classes}{flip}{note}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class InMemoryImageDataset(ImageDataset):
    """A dataset whose images are one uint8 tensor `[N, C, S, S]` in memory (built-in sets)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, **attributes) -> None:
        super().__init__(**attributes)
        expected = (self.channels, self.image_size, self.image_size)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be uint8 [N, {', '.join(map(str, expected))}], got "
                             f"{images.dtype} {list(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [N={images.shape[0]}], got {list(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def load_uint8(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def as_uint8_tensor(self) -> torch.Tensor:
        """The stored tensor itself (no copy): do not modify it in place."""
        return self.images

    def as_label_tensor(self) -> torch.Tensor:
        return self.labels


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
