"""Finding the images of a dataset folder: split folders, class subfolders, held-out val.

Layout rules (see `load_image_dataset`):

- `DIR/train` (+ optional `DIR/val`); without a `train` subfolder DIR itself is the train set.
- Inside a split folder, each subfolder holding images is a class (sorted names, searched
  recursively); with no such subfolder, the images directly inside form an unconditional set.
- Without a `val` folder, val is a fixed fraction of every class of train, chosen by hashing
  each file's relative path with the seed: the choice does not depend on listing order, and
  adding files to a class rarely moves the existing ones between train and val.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ldmkit.data.decode import IMAGE_EXTENSIONS, is_image_file
from ldmkit.errors import UserError


@dataclass
class ImageListing:
    """Image files with labels (-1 everywhere when `class_names` is empty)."""

    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)


def _visible(name: str) -> bool:
    # Dot-files include macOS "._x.png" resource forks, which are not images.
    return not name.startswith(".")


def _images_directly_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _visible(p.name) and p.is_file() and is_image_file(p))


def _images_under(folder: Path) -> list[Path]:
    """Images at any depth, through symlinked folders, each real folder searched once: a link
    back to a folder above (a loop) or a second link to one would count its images again."""
    found, searched = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in searched:
            dirs[:] = []
            continue
        searched.add(real)
        dirs[:] = [d for d in dirs if _visible(d)]
        found += [Path(root, f) for f in files if _visible(f) and is_image_file(Path(f))]
    return sorted(found)


def _class_folders(folder: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """(subfolders that hold at least one image at any depth, by name, sorted; the names of
    those that hold none)."""
    classes, empty = {}, []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name)):
        images = _images_under(sub)
        if images:
            classes[sub.name] = images
        else:
            empty.append(sub.name)
    return classes, empty


def split_folders(root: Path) -> tuple[Path, Path | None]:
    """(train folder, val folder or None) for a dataset root; UserError if it is unusable."""
    if not root.exists():
        raise UserError(f"Image folder '{root}' does not exist "
                        "(built-in datasets are 'emoji' and 'fashion-mnist[:DIR]').")
    if not root.is_dir():
        raise UserError(f"'{root}' is not a folder (expected a folder of images, 'emoji' or 'fashion-mnist').")
    train, val = root / "train", root / "val"
    if train.is_dir():
        return train, (val if val.is_dir() else None)
    if val.is_dir():
        # Otherwise "val" would silently become a class of a train set made of DIR itself.
        raise UserError(f"'{root}' has a 'val' folder but no 'train' folder: put the training "
                        f"images in '{train}'.")
    return root, None


def list_split(folder: Path) -> ImageListing:
    """All images of one split folder, labelled by class subfolder; UserError when none."""
    classes, empty = _class_folders(folder)
    if not classes:
        files = _images_directly_in(folder)
        if not files:
            raise UserError(
                f"No images found in '{folder}': looked for {', '.join(IMAGE_EXTENSIONS)} files "
                "directly inside it or in class subfolders."
            )
        return ImageListing(files, [-1] * len(files), [])
    loose = _images_directly_in(folder)
    if loose:
        warnings.warn(f"Ignoring {len(loose)} images directly inside '{folder}': it has class "
                      "subfolders, so only images inside those are used.", stacklevel=3)
    if empty:
        # Said out loud: a class the user meant to fill would otherwise just be missing.
        warnings.warn(f"Ignoring {len(empty)} class folder(s) of '{folder}' with no images: "
                      f"{', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}.", stacklevel=3)
    listing = ImageListing(class_names=list(classes))
    for label, files in enumerate(classes.values()):
        listing.files += files
        listing.labels += [label] * len(files)
    return listing


def list_val_folder(folder: Path, class_names: list[str]) -> ImageListing:
    """A separate val folder, labelled with the train set's class list."""
    listing = list_split(folder)
    if not class_names:
        if listing.class_names:
            raise UserError(f"'{folder}' has class subfolders but the train images are a flat folder.")
        return listing
    if not listing.class_names:
        raise UserError(f"'{folder}' has no class subfolders but the train set has classes {class_names}.")
    unknown = sorted(set(listing.class_names) - set(class_names))
    if unknown:
        warnings.warn(f"Ignoring val classes not present in train: {unknown}.", stacklevel=3)
    relabelled = ImageListing(class_names=list(class_names))
    for path, label in zip(listing.files, listing.labels):
        name = listing.class_names[label]
        if name in class_names:
            relabelled.files.append(path)
            relabelled.labels.append(class_names.index(name))
    return relabelled


def held_out_count(class_size: int, val_fraction: float) -> int:
    """How many of a class go to val: round(fraction * n), at least 1, leaving 1 for train."""
    if class_size < 2:
        return 0
    return min(class_size - 1, max(1, round(val_fraction * class_size)))


def hold_out(
    listing: ImageListing, base: Path, val_fraction: float, seed: int
) -> tuple[ImageListing, ImageListing]:
    """Split a listing into (train, val), per class, deterministically (see module docstring)."""
    train, val = ImageListing(class_names=listing.class_names), ImageListing(class_names=listing.class_names)
    by_label: dict[int, list[Path]] = {}
    for path, label in zip(listing.files, listing.labels):
        by_label.setdefault(label, []).append(path)

    def order(path: Path) -> bytes:
        return hashlib.sha256(f"{seed}/{path.relative_to(base).as_posix()}".encode()).digest()

    chosen = set()
    for files in by_label.values():
        chosen.update(sorted(files, key=order)[: held_out_count(len(files), val_fraction)])
    for path, label in zip(listing.files, listing.labels):
        part = val if path in chosen else train
        part.files.append(path)
        part.labels.append(label)
    return train, val
