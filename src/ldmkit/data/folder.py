"""`FolderImageDataset`: images decoded from files on demand, with bad files kept out.

Bad files are handled twice, so that a long run never dies on one broken image:

1. at construction every file gets a cheap check (`check_image_file`); failures are dropped
   with ONE warning that names how many there were;
2. a file that still fails to decode later (e.g. a truncated JPEG, which passes the cheap
   check) is replaced by the next decodable image, with one warning per file.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ldmkit.data.dataset import ImageDataset
from ldmkit.data.decode import check_image_file, load_image
from ldmkit.data.folder_layout import ImageListing, hold_out, list_split, list_val_folder, split_folders
from ldmkit.errors import UserError

# Give up substituting after this many consecutive failures: then something systematic is
# wrong (the disk went away) and a clear error beats silently training on one image.
_MAX_SUBSTITUTIONS = 32


class FolderImageDataset(ImageDataset):
    """Image files decoded, resized and centre-cropped on each access."""

    def __init__(self, listing: ImageListing, **attributes) -> None:
        super().__init__(class_names=listing.class_names, **attributes)
        self.files = [str(path) for path in listing.files]  # str: cheap to pickle to workers
        self.labels = list(listing.labels)
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def load_uint8(self, index: int) -> tuple[torch.Tensor, int]:
        error: Exception | None = None
        for attempt in range(min(len(self.files), _MAX_SUBSTITUTIONS)):
            candidate = (index + attempt) % len(self.files)
            try:
                return load_image(self.files[candidate], self.image_size, self.channels), self.labels[candidate]
            except Exception as exc:  # noqa: BLE001 - any decode failure is recoverable here
                error = exc
                if candidate not in self._reported:
                    self._reported.add(candidate)
                    warnings.warn(f"Could not decode '{self.files[candidate]}' ({exc}); "
                                  "using another image in its place.", stacklevel=2)
        raise RuntimeError(f"{_MAX_SUBSTITUTIONS} images in a row from index {index} of "
                           f"{self.source} could not be decoded; last error: {error}")

    def as_label_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.int64)  # no need to decode for labels


def drop_unreadable(listing: ImageListing, where: str) -> ImageListing:
    """Check every file once (in threads: it is I/O bound) and drop the bad ones, warning once.
    `where` names the files for the messages ("'DIR'", "the val split held out of 'DIR'")."""
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        readable = list(pool.map(check_image_file, listing.files, chunksize=64))
    bad = [path for path, ok in zip(listing.files, readable) if not ok]
    if bad:
        examples = ", ".join(path.name for path in bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(f"{len(bad)} of the {len(listing)} files of {where} are not readable images; "
                      f"skipping them ({examples}).", stacklevel=3)
    if len(bad) == len(listing):
        raise UserError(f"None of the {len(listing)} image files of {where} could be read.")
    kept = ImageListing(class_names=listing.class_names)
    for path, label, ok in zip(listing.files, listing.labels, readable):
        if ok:
            kept.files.append(path)
            kept.labels.append(label)
    return kept


def load_folder_dataset(
    root: Path,
    split: str,
    *,
    image_size: int,
    flip: bool,
    channels: int,
    val_fraction: float,
    seed: int,
) -> FolderImageDataset:
    """Build the train or val dataset of an image folder (layout in `folder_layout`)."""
    train_dir, val_dir = split_folders(root)
    train = list_split(train_dir)
    if split == "val" and val_dir is not None:
        chosen, where = list_val_folder(val_dir, train.class_names), f"'{val_dir}'"
    elif val_dir is not None:
        chosen, where = train, f"'{train_dir}'"
    else:
        held_train, held_val = hold_out(train, train_dir, val_fraction, seed)
        chosen = held_val if split == "val" else held_train
        where = f"the {split} split held out of '{train_dir}'" if split == "val" else f"'{train_dir}'"
        if not chosen.files:
            raise UserError(f"'{train_dir}' has {len(train)} images: too few to hold out a val split "
                            f"(val_fraction={val_fraction}); add images or a '{root / 'val'}' folder.")
    if not chosen.files:
        raise UserError(f"No {split} images found in {where}.")
    chosen = drop_unreadable(chosen, where)
    return FolderImageDataset(chosen, source=str(root), split=split, channels=channels,
                              image_size=image_size, flip=flip)
