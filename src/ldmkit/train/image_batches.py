"""Image batches on the device, for the VAE stage and for encoding the latent cache.

Small built-in datasets (`InMemoryImageDataset`) go to the device once as one uint8 tensor and
batches are gathered by index there, with no DataLoader and no per-item Python. Folders are
read by a DataLoader whose workers return uint8 images (a quarter of the float32 bytes to
pin and copy); scaling to [-1, 1] happens on the device. Flips are not done here: the
training loops draw them from their own seeded generator so that resume is exact.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ldmkit.errors import UserError
from ldmkit.train.batches import IndexStream, StreamBatchSampler, rank_slice, to_device_without_sync
from ldmkit.train.distributed import DistInfo
from ldmkit.train.run_lock import close_inherited_locks


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


class _Uint8Items(Dataset):
    """Wraps an ImageDataset so that workers return (uint8 image, label), never flipped."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset.load_uint8(index)  # type: ignore[attr-defined]


def _in_memory(dataset: object) -> bool:
    from ldmkit.data.dataset import InMemoryImageDataset

    return isinstance(dataset, InMemoryImageDataset)


def _loader(dataset: object, batch_sampler: object, device: torch.device, num_workers: int) -> DataLoader:
    return DataLoader(
        _Uint8Items(dataset),  # type: ignore[arg-type]
        batch_sampler=batch_sampler,  # type: ignore[arg-type]
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        # Its own generator: each DataLoader started took a draw from torch's global one, so a run
        # resumed in the VAE stage (one more loader started) drew other dropout masks afterwards.
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=close_inherited_locks if num_workers > 0 else None,
    )


def training_batches(
    dataset: object,
    *,
    stream: IndexStream,
    offset: int,
    batch_size: int,
    dist: DistInfo,
    num_workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images [-1, 1], labels) batches: this rank's slices of the stream from `offset`."""
    device = dist.device
    if _in_memory(dataset):
        images = dataset.as_uint8_tensor().to(device)  # type: ignore[attr-defined]
        labels = dataset.as_label_tensor().to(device)  # type: ignore[attr-defined]
        while True:
            idx = to_device_without_sync(rank_slice(stream.take(offset, batch_size), dist.rank, dist.world_size),
                                         device)
            offset += batch_size
            yield to_float_images(images[idx]), labels[idx]
    sampler = StreamBatchSampler(stream, offset=offset, batch_size=batch_size, rank=dist.rank,
                                 world_size=dist.world_size)
    for images, labels in _worker_errors_as_raised(_loader(dataset, sampler, device, num_workers)):
        yield to_float_images(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True)


def _worker_errors_as_raised(loader: DataLoader) -> Iterator:
    """The loader's batches; a `UserError` a worker raised as its message alone (DataLoader raises
    it again with the worker's whole traceback in the message, which `ldm` would print)."""
    try:
        yield from loader
    except UserError as err:
        text = str(err)
        if text.startswith("Caught UserError"):
            text = text.rsplit("UserError: ", 1)[-1].strip()
        raise UserError(text) from None


def ordered_batches(
    dataset: object,
    indices: list[int],
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images [-1, 1], labels) for `indices`, in that order, in batches (for encoding)."""
    if _in_memory(dataset):
        all_images = dataset.as_uint8_tensor()  # type: ignore[attr-defined]
        all_labels = dataset.as_label_tensor()  # type: ignore[attr-defined]
        for start in range(0, len(indices), batch_size):
            idx = torch.tensor(indices[start : start + batch_size], dtype=torch.long)
            yield to_float_images(all_images[idx].to(device)), all_labels[idx].to(device)
        return
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    for images, labels in _worker_errors_as_raised(_loader(dataset, chunks, device, num_workers)):
        yield to_float_images(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True)
