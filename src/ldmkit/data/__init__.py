"""Data: image folders and built-in datasets in, `[-1, 1]` tensors out; images back to PNG.

`load_image_dataset(source, split, image_size=...)` is the entry point (sources: a folder,
"emoji", "fashion-mnist[:DIR]"); `images` converts model outputs to pixels and files.
This package imports neither `models` nor `diffusion`.
"""

from ldmkit.data.dataset import ImageDataset, InMemoryImageDataset
from ldmkit.data.folder import FolderImageDataset
from ldmkit.data.images import make_grid, save_png, to_pil, to_uint8
from ldmkit.data.load import load_image_dataset

__all__ = [
    "FolderImageDataset",
    "ImageDataset",
    "InMemoryImageDataset",
    "load_image_dataset",
    "make_grid",
    "save_png",
    "to_pil",
    "to_uint8",
]
