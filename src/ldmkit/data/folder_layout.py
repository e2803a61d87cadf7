"""Finding the images of a dataset folder: split folders, class subfolders, held-out val.

Layout rules (see `load_image_dataset`):

- `DIR/train` (+ optional `DIR/val`); without a `train` subfolder DIR itself is the train set.
  Split folders are matched in any case and by their usual aliases (`Train`, `training`;
  `Val`, `valid`, `validation`): a `Train`/`Val` pair read as two classes would train on the
  val images. A `test` folder is never read: beside `train` it is reported, without `train`
  it is refused (it would become a class).
- Inside a split folder, each subfolder holding images is a class (sorted names, searched
  recursively); with no such subfolder, the images directly inside form an unconditional set.
  Hidden folders are skipped (with a warning when they hold images); a class folder whose
  name is not UTF-8 (zips made on Windows) is named with `\\xNN` escapes, so the name can
  be printed, stored as JSON and typed to `ldm generate --class`.
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

from ldmkit.data.class_names import nfc
from ldmkit.data.decode import IMAGE_EXTENSIONS, is_image_file, is_unreadable_image_file
from ldmkit.errors import UserError


class ValClassesMissing(UserWarning):
    """A val folder without images of some train classes (`ldm eval` says it in its own words)."""


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


# Files that Windows drops into image folders: not images, and not worth a word.
_JUNK_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini"}

SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


def printable_name(name: str) -> str:
    """`name` with any bytes that are not UTF-8 (held by Python as surrogates) written as
    `\\xNN`: such a string can be printed and stored as JSON or UTF-8 text, where the
    surrogates would raise `UnicodeEncodeError`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _images_directly_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _visible(p.name) and p.is_file() and is_image_file(p))


def _others_directly_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir()
            if _visible(p.name) and p.is_file() and not is_image_file(p) and p.name.lower() not in _JUNK_FILES]


def _files_under(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) at any depth, through symlinked folders, each real folder searched
    once: a link back to a folder above (a loop) or a second link to one would count its images
    again. Hidden files and folders and Windows' junk files are left out of both."""
    images, others, searched = [], [], set()
    top = os.path.realpath(folder)
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in searched or Path(top).is_relative_to(real) and real != top:
            # A link to a folder above this class (its split folder) would pull the other classes in.
            if real not in searched:
                warnings.warn(f"Not following '{root}': it links to '{real}', a folder above the class "
                              f"folder '{folder}'.", stacklevel=5)
            dirs[:] = []
            continue
        searched.add(real)
        dirs[:] = [d for d in dirs if _visible(d)]
        for name in files:
            if not _visible(name) or name.lower() in _JUNK_FILES:
                continue
            path = Path(root, name)
            if os.path.exists(path) and not os.path.isfile(path):
                continue  # a named pipe called x.png: reading it waits forever
            (images if is_image_file(path) else others).append(path)
    return sorted(images), others



def _holds_images(folder: Path) -> bool:
    """Whether any image lies at any depth of `folder` (stops at the first; no symlinked folders)."""
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if _visible(d)]
        if any(_visible(name) and is_image_file(Path(name)) for name in files):
            return True
    return False


def _other_files_note(others: list[Path]) -> str:
    """Why a folder with files has no images: "holds 10 file(s), none with an image extension: .xyz"."""
    suffixes = sorted({printable_name(p.suffix.lower()) or "no extension" for p in others})
    return f"holds {len(others)} file(s), none with an image extension: {_names(suffixes)}"


def _names(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _class_name(sub: Path, taken: dict[str, Path]) -> str:
    """The class name of a class folder: its name, printable (see `printable_name`) and in NFC (macOS
    writes "café" decomposed; typed or copied elsewhere it is composed); two folders whose names
    print the same would be one class in every file that stores names."""
    name = nfc(printable_name(sub.name))
    if name in taken:
        raise UserError(f"Class folders '{taken[name]}' and '{sub}' both get the class name {name!r}: "
                        "rename one of them.")
    taken[name] = sub
    return name


def _class_folders(folder: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """(subfolders that hold at least one image at any depth, by class name, sorted; the names
    of those that hold none, each with a note of the other files it holds). Warns about hidden
    subfolders that hold images and class names that had to be escaped."""
    classes, empty, taken = {}, [], {}
    hidden, escaped, unreadable = [], [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not _visible(sub.name):
            if _holds_images(sub):  # e.g. a class renamed ".cats" to leave it out for a while
                hidden.append(printable_name(sub.name))
            continue
        images, others = _files_under(sub)
        unreadable += [path for path in others if is_unreadable_image_file(path)]
        name = _class_name(sub, taken)
        if printable_name(sub.name) != sub.name:
            escaped.append(name)
        if images:
            classes[name] = images
        else:
            empty.append(f"{name} ({_other_files_note(others)})" if others else name)
    if hidden:
        warnings.warn(f"Ignoring {len(hidden)} hidden folder(s) of '{folder}' that hold images: "
                      f"{_names(hidden)} (a name starting with '.' hides it; rename it to use it).", stacklevel=4)
    if unreadable:
        suffixes = sorted({path.suffix.lower() for path in unreadable})
        warnings.warn(f"Skipping {len(unreadable)} photo(s) of '{folder}' in a format this installation cannot "
                      f"read ({', '.join(suffixes)}; e.g. {_names([p.name for p in unreadable], 3)}): convert them "
                      "to JPEG or PNG to use them.", stacklevel=4)
    if escaped:
        warnings.warn(f"{len(escaped)} class folder name(s) of '{folder}' are not UTF-8 text; their bytes "
                      f"are written as \\xNN in the class names: {_names(escaped)}.", stacklevel=4)
    return classes, empty


def _split_folder(root: Path, split: str) -> Path | None:
    """The folder of `split` in `root`, matched in any case and by alias; UserError when two match."""
    found = [p for p in root.iterdir() if p.name.lower() in SPLIT_NAMES[split] and p.is_dir()]
    if len(found) > 1:
        names = " and ".join(f"'{p.name}'" for p in sorted(found))
        raise UserError(f"'{root}' has {names} folders, all read as the {split} split: "
                        "keep one (merge or rename the others).")
    return found[0] if found else None


def _warn_unused_beside(root: Path, used: list[Path]) -> None:
    """Folders of `root` beside its split folders are not read; say so when they hold images
    (a `test` split, or a class the user meant to add)."""
    unused = [p for p in sorted(root.iterdir()) if p not in used and _visible(p.name) and p.is_dir()]
    with_images = [printable_name(p.name) for p in unused if _holds_images(p)]
    if with_images:
        warnings.warn(f"Not reading {len(with_images)} folder(s) of '{root}' that hold images: "
                      f"{_names(with_images)} (beside the split folders, only train and val are read).",
                      stacklevel=4)


def split_folders(root: Path) -> tuple[Path, Path | None]:
    """(train folder, val folder or None) for a dataset root; UserError if it is unusable."""
    if not root.exists():
        raise UserError(f"Image folder '{root}' does not exist "
                        "(built-in datasets are 'emoji' and 'fashion-mnist[:DIR]').")
    if not root.is_dir():
        raise UserError(f"'{root}' is not a folder (expected a folder of images, 'emoji' or 'fashion-mnist').")
    train, val, test = (_split_folder(root, split) for split in ("train", "val", "test"))
    if train is not None:
        _warn_unused_beside(root, [train, val])
        return train, val
    for other in (val, test):
        if other is not None:
            # Otherwise it would silently become a class of a train set made of DIR itself.
            raise UserError(f"'{root}' has a '{other.name}' folder but no 'train' folder: put the training "
                            f"images in '{root / 'train'}'.")
    beside = _split_folder(root.resolve().parent, "val") if root.name.lower() in SPLIT_NAMES["train"] else None
    if beside is not None:  # `--data DIR/train`: DIR/val would be left out and val held out of train
        warnings.warn(f"Reading '{root}' alone; the '{beside.name}' folder beside it is not read (val is held "
                      f"out of '{root}' instead): give the folder that holds both, '{root.parent}'.", stacklevel=3)
    return root, None


def list_split(folder: Path) -> ImageListing:
    """All images of one split folder, labelled by class subfolder; UserError when none."""
    classes, empty = _class_folders(folder)
    if not classes:
        files = _images_directly_in(folder)
        if not files:
            others = _others_directly_in(folder)
            raise UserError(
                f"No images found in '{folder}': looked for {', '.join(IMAGE_EXTENSIONS)} files "
                f"directly inside it or in class subfolders{f'; it {_other_files_note(others)}' if others else ''}."
            )
        return ImageListing(files, [-1] * len(files), [])
    loose = _images_directly_in(folder)
    if loose:
        warnings.warn(f"Ignoring {len(loose)} images directly inside '{folder}': it has class "
                      "subfolders, so only images inside those are used.", stacklevel=3)
    if empty:
        # Said out loud: a class the user meant to fill would otherwise just be missing.
        warnings.warn(f"Ignoring {len(empty)} class folder(s) of '{folder}' with no images: "
                      f"{_names(empty)}.", stacklevel=3)
    if len(classes) == 1:
        _warn_if_classes_one_level_down(folder)
    listing = ImageListing(class_names=list(classes))
    for label, files in enumerate(classes.values()):
        listing.files += files
        listing.labels += [label] * len(files)
    return listing


def _warn_if_classes_one_level_down(folder: Path) -> None:
    """One class folder whose subfolders hold the images (`train/images/cats/...`): its name became
    the only class and the subfolders, meant as classes, were merged into it."""
    only = next((p for p in folder.iterdir() if p.is_dir() and _visible(p.name) and _holds_images(p)), None)
    if only is None:  # its images lie behind a link (_holds_images does not follow links): nothing to say
        return
    inner = sorted(printable_name(p.name) for p in only.iterdir()
                   if p.is_dir() and _visible(p.name) and _holds_images(p))
    if len(inner) >= 2:
        warnings.warn(f"'{folder}' has one class folder, '{printable_name(only.name)}', whose subfolders "
                      f"{_names(inner)} hold the images: they are read as one class. If they are the classes, "
                      f"put them directly in '{folder}'.", stacklevel=4)


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
    missing = [name for name in class_names if name not in listing.class_names]
    if missing:  # its validation loss and any evaluation against val say nothing about these
        warnings.warn(f"'{folder}' has no images of the train class(es) {_names(missing)}: validation "
                      "leaves them out.", ValClassesMissing, stacklevel=3)
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
        # fsencode: a name that is not UTF-8 holds surrogates, which str.encode() refuses; for
        # any other name the bytes are the same as before, so no file changes split.
        return hashlib.sha256(f"{seed}/".encode() + os.fsencode(path.relative_to(base).as_posix())).digest()

    chosen = set()
    for files in by_label.values():
        chosen.update(sorted(files, key=order)[: held_out_count(len(files), val_fraction)])
    for path, label in zip(listing.files, listing.labels):
        part = val if path in chosen else train
        part.files.append(path)
        part.labels.append(label)
    return train, val
