"""The real images `ldm eval` compares samples with, read only once every check has passed.

A folder of 100,000 files took half a minute and gigabytes to decode, and `ldm eval` used to do
that before it refused for reasons known from the start (a model of other classes, Inception
weights not there). So: a folder's class names come from its file listing, before anything is
opened; only the images a report uses are decoded (the n training images of the real baseline,
unless a classifier is trained on all of them), into one tensor whose size is checked against
the memory available first, behind a progress bar.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from ldmkit.data.dataset import InMemoryImageDataset, seeded_subset
from ldmkit.data.folder_layout import list_split, split_folders
from ldmkit.data.load import is_builtin_source
from ldmkit.data.memory import check_fits_in_memory

__all__ = ["listed_class_names", "baseline_indices", "check_real_images_fit", "decode_real_images",
           "warn_missing_test_classes"]


def listed_class_names(source: str | os.PathLike) -> list[str] | None:
    """The class names of the folder dataset `source`, from its listing alone (no file opened);
    None for a built-in dataset, whose names come with its (in-memory) images."""
    if is_builtin_source(source):
        return None
    with warnings.catch_warnings():  # the listing's warnings are said when the data loads
        warnings.simplefilter("ignore")
        train_dir, _ = split_folders(Path(source).expanduser())
        return list_split(train_dir).class_names


def baseline_indices(count: int, n: int, seed: int = 0) -> list[int]:
    """`n` of `count` training images drawn (seeded) for the real baseline, in file order: the
    baseline compares n training images with the test set (`evaluate` draws n of what it gets)."""
    return seeded_subset(count, n, seed)


def _needs_decoding(dataset) -> bool:
    # A built-in set is held decoded already (and was checked to fit when it loaded).
    return not isinstance(dataset, InMemoryImageDataset)


def check_real_images_fit(datasets: Sequence, counts: Sequence[int], *, source: str, advice: str) -> None:
    """`UserError` before any decoding when `counts[i]` images of each dataset that is decoded
    from files would not fit in memory together."""
    decoded = [(dataset, count) for dataset, count in zip(datasets, counts) if _needs_decoding(dataset)]
    if not decoded:
        return
    first = decoded[0][0]
    check_fits_in_memory(f"the {sum(c for _, c in decoded)} real images of {source}",
                         sum(c for _, c in decoded), first.channels, first.image_size, advice=advice)


def decode_real_images(dataset, indices: Sequence[int] | None = None, *,
                       quiet: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 `[N, C, S, S]` and int64 labels `[N]` of `dataset`'s items `indices` (all by default).
    A folder's files are decoded into one tensor made up front (a list of images stacked would
    need twice the memory at the end), with a progress bar unless `quiet`."""
    if not _needs_decoding(dataset):
        if indices is None:  # the stored tensors themselves, not a copy
            return dataset.as_uint8_tensor(), dataset.as_label_tensor()
        chosen = torch.as_tensor(list(indices), dtype=torch.int64)
        return dataset.as_uint8_tensor()[chosen], dataset.as_label_tensor()[chosen]
    if indices is None:
        indices = range(len(dataset))
    images = torch.empty((len(indices), dataset.channels, dataset.image_size, dataset.image_size), dtype=torch.uint8)
    labels = torch.empty(len(indices), dtype=torch.int64)
    bar = tqdm(indices, unit="img", disable=quiet, desc=f"reading the real {dataset.split} images")
    for row, index in enumerate(bar):
        images[row], labels[row] = dataset.load_uint8(index)
    return images, labels


def warn_missing_test_classes(class_names: Sequence[str], test_labels: torch.Tensor, where: str) -> None:
    """Warn when classes have no real test image: the test accuracy and every distance to the test
    set then say nothing about them, and their samples are judged against other classes' images."""
    present = set(test_labels.tolist())
    missing = [name for label, name in enumerate(class_names) if label not in present]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        warnings.warn(f"{len(missing)} of the {len(class_names)} classes have no real test images in {where} "
                      f"({shown}): the classifier's test accuracy and the distances to the test set leave them "
                      "out; add their images to the val folder to judge them", stacklevel=2)
