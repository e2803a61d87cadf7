"""`ldm eval --samples FILE.npz`: the `images` (and `labels`) arrays of a numpy archive, read with
no pickle and refused in one line when they are not what they should be."""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ldmkit.errors import UserError

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npz_arrays(path: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`images` (and `labels`) of an `.npz` file; a file that is not one is one line, not numpy's traceback."""
    if not Path(path).is_file():
        raise UserError(f"--samples {path} does not exist")
    try:
        _check_declared_size(path)
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):  # an .npy file under an .npz name: one array, no `with` protocol
            raise UserError(f"--samples {path} holds one array, not the arrays of an .npz file (save them with "
                            "numpy.savez(path, images=..., labels=...))")
        with data:
            if "images" not in data:
                raise UserError(f"{path} has no 'images' array (found: {', '.join(data.files)})")
            images = torch.from_numpy(data["images"][:limit])
            labels = _labels(data["labels"], path)[:limit] if "labels" in data else None
    except UserError:  # a ValueError too: keep its own message
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"--samples {path} is not a readable .npz file ({type(err).__name__}: {err})") from None
    except MemoryError:
        raise UserError(f"--samples {path}: its arrays do not fit in this machine's memory") from None
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise UserError(f"{path}: 'images' must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise UserError(f"{path} holds {images.shape[0]} images and {labels.shape[0]} labels: give one label per image")
    return images, labels


def _labels(array: np.ndarray, path: str) -> torch.Tensor:
    """The class ids of an archive's `labels`: a 1-D array of whole numbers (floats such as 1.7
    were cut to 1, strings were a TypeError)."""
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
        raise UserError(f"{path}: 'labels' must be a 1-D array of integer class ids, got {array.dtype} {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def _check_declared_size(path: str) -> None:
    """UserError when the file's arrays declare more bytes than this machine's memory: a header of a
    few bytes saying (10**6, 3, 1024, 1024) had numpy try to allocate 2.9 TiB (a traceback). (A smaller
    lie costs only the bytes the file holds: numpy fills its array as it reads, then says the data ended.)"""
    if not zipfile.is_zipfile(path):
        return  # np.load says what it is
    declared = 0
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".npy"):
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = _HEADER_READERS.get(version)
                    if read_header is None:  # a newer format: np.load judges it
                        continue
                    shape, _, dtype = read_header(member)  # the header only, not the data
                    declared += math.prod(shape) * dtype.itemsize
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if memory is not None and declared > memory:
        raise UserError(f"--samples {path} declares {declared / 2**30:.1f} GiB of arrays, more than this "
                        f"machine's {memory / 2**30:.1f} GiB of memory")
