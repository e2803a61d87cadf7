"""`FolderImageDataset`: images decoded from files on demand, with bad files kept out.

Bad files are handled twice, so that a long run never dies on one broken image:

1. at construction every file gets a cheap check (`inspect_image_file`); failures are dropped
   with ONE warning that names how many there were (files over PIL's size limit get their own
   warning, with their pixel counts), and a class left with no readable image is refused;
2. a file that still fails to decode later (a file damaged in ways the check cannot see without
   decoding it) is replaced by the next decodable image of its class (of another class where
   none of its own decodes), returned with the substitute's own label; one warning per file.
"""

from __future__ import annotations

import bisect
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from ldmkit.data.dataset import ImageDataset
from ldmkit.data.decode import ImageCheck, inspect_image_file, large_image_limit, load_image, quiet_large_images
from ldmkit.data.folder_layout import (
    ImageListing,
    hold_out,
    list_split,
    list_val_folder,
    printable_name,
    split_folders,
)
from ldmkit.errors import UserError

# Give up substituting after this many consecutive failures: then something systematic is
# wrong (the disk went away) and a clear error beats silently training on one image.
_MAX_SUBSTITUTIONS = 32


class FolderImageDataset(ImageDataset):
    """Image files decoded, resized and centre-cropped on each access."""

    def __init__(self, listing: ImageListing, large: frozenset[str] = frozenset(), **attributes) -> None:
        super().__init__(class_names=listing.class_names, **attributes)
        self.files = [str(path) for path in listing.files]  # str: cheap to pickle to workers
        self.labels = list(listing.labels)
        self._large = large  # files already reported as large: PIL's warning on them is noise
        self._reported: set[int] = set()
        self._by_label: dict[int, list[int]] | None = None  # built on first use, in each worker

    def __len__(self) -> int:
        return len(self.files)

    def _substitutes(self, index: int) -> list[int]:
        """`index`, then the other images of its class after it (wrapping round), then any other:
        a substitute is returned with its own label (one from another class was once trained
        under the broken file's label)."""
        if self._by_label is None:
            self._by_label = {}
            for i, label in enumerate(self.labels):
                self._by_label.setdefault(label, []).append(i)
        members = self._by_label[self.labels[index]]
        start = bisect.bisect_left(members, index)
        same = members[start:] + members[:start]
        return same + [(index + k) % len(self.files) for k in range(1, _MAX_SUBSTITUTIONS + 1)]

    def load_uint8(self, index: int) -> tuple[torch.Tensor, int]:
        error: Exception | None = None
        tried = 0
        for tried, candidate in enumerate(dict.fromkeys(self._substitutes(index)), 1):
            if tried > _MAX_SUBSTITUTIONS:
                break
            try:
                path = self.files[candidate]
                image = load_image(path, self.image_size, self.channels, known_large=path in self._large)
                return image, self.labels[candidate]
            except Exception as exc:  # noqa: BLE001 - any decode failure is recoverable here
                error = exc
                if candidate not in self._reported:
                    self._reported.add(candidate)
                    warnings.warn(f"Could not decode '{self.files[candidate]}' ({exc}); "
                                  "using another image in its place.", stacklevel=2)
        # Whole folders unreadable (removed, unmounted mid-run): a run's last checkpoint is kept.
        raise UserError(f"{min(tried, _MAX_SUBSTITUTIONS)} images from index {index} of {self.source} could not be "
                        f"read (last error: {error}); is the data still there? A training run keeps its last "
                        "checkpoint: the same command resumes once the images are back")

    def as_label_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.int64)  # no need to decode for labels


def _examples(paths: list[Path], checks: dict[Path, ImageCheck] | None = None) -> str:
    """ "a.png, b.png, c.png, ..." (with pixel counts when `checks` is given)."""
    shown = [printable_name(p.name) + (f" {checks[p].pixels:,} pixels" if checks and checks[p].pixels else "")
             for p in paths[:3]]
    return ", ".join(shown) + (", ..." if len(paths) > 3 else "")


SHOW_CHECK_FROM = 5000  # files: below this the check takes a second or two; above it, a bar on a terminal


_last_inspected: tuple[tuple, dict[Path, ImageCheck]] | None = None


def _stamp(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:
        return (path, None)
    return (path, stat.st_size, stat.st_mtime_ns)


def _inspect_all(files: list[Path], where: str) -> dict[Path, ImageCheck]:
    # Threads: the check is I/O bound. The filter swap happens here, in the calling thread, once.
    # 100,000 files took 12 s without a word: a bar says what is happening (only on a terminal).
    # The last listing's checks are kept while no file's size or time changes: a folder without
    # a val folder is checked whole for its train split and again for the val split held out of
    # it, moments later (a stat is ~100x cheaper than reading a header).
    global _last_inspected
    key = tuple(_stamp(path) for path in files)
    if _last_inspected is not None and _last_inspected[0] == key:
        return _last_inspected[1]
    with quiet_large_images(), ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        checks = tqdm(pool.map(inspect_image_file, files, chunksize=64), total=len(files), unit="file",
                      desc=f"checking the files of {where}", leave=False,
                      disable=None if len(files) >= SHOW_CHECK_FROM else True)
        result = dict(zip(files, checks))
    _last_inspected = (key, result)
    return result


def _warn_about_size(checks: dict[Path, ImageCheck], where: str) -> None:
    limit = large_image_limit()
    too_large = [path for path, check in checks.items() if check.too_large]
    large = [path for path, check in checks.items() if check.readable and limit and check.pixels > limit]
    if too_large:
        warnings.warn(f"{len(too_large)} of the {len(checks)} files of {where} are too large to decode safely "
                      f"(over {2 * limit:,} pixels, PIL's decompression-bomb limit); skipping them "
                      f"({_examples(too_large, checks)}): shrink them to use them.", stacklevel=4)
    if large:
        warnings.warn(f"{len(large)} image(s) of {where} are over {limit:,} pixels ({_examples(large, checks)}): "
                      "each is decoded whole whenever it is read, which is slow; shrinking them "
                      "would speed up training.", stacklevel=4)


def _refuse_unreadable_classes(listing: ImageListing, checks: dict[Path, ImageCheck], where: str) -> None:
    """UserError when a class has files but none readable: kept, it would be a class the model
    never sees, whose `--class` samples are noise."""
    by_label: dict[int, list[Path]] = {}
    for path, label in zip(listing.files, listing.labels):
        by_label.setdefault(label, []).append(path)
    for label, paths in by_label.items():
        if label >= 0 and not any(checks[path].readable for path in paths):
            large = [path for path in paths if checks[path].too_large]
            broken = [path for path in paths if path not in large]
            why = ""
            if broken:
                why = f"{len(broken)} {'fails' if len(broken) == 1 else 'fail'} to decode ({_examples(broken)})"
            if large:  # too large is not broken: say what to do with them
                why += (", and " if why else "") + (f"{len(large)} {'is' if len(large) == 1 else 'are'} too large "
                                                    f"to decode safely ({_examples(large, checks)}; shrink them)")
            raise UserError(f"Class '{listing.class_names[label]}' of {where} has no readable image: of its "
                            f"{len(paths)} training files, {why}; fix them or remove the class folder.")


def drop_unreadable(
    listing: ImageListing, where: str, *, every_class: bool = False
) -> tuple[ImageListing, frozenset[str]]:
    """Check every file once and drop the bad ones, warning once: (kept listing, files of it
    over PIL's warning size). `where` names the files for the messages ("'DIR'", "the val
    split held out of 'DIR'"); `every_class`: refuse a class left with no image (train)."""
    checks = _inspect_all(listing.files, where)
    bad = [path for path, check in checks.items() if not check.readable and not check.too_large]
    if bad:
        warnings.warn(f"{len(bad)} of the {len(listing)} files of {where} are not readable images; "
                      f"skipping them ({_examples(bad)}).", stacklevel=3)
    _warn_about_size(checks, where)
    if not any(check.readable for check in checks.values()):
        raise UserError(f"None of the {len(listing)} image files of {where} could be read.")
    if every_class:
        _refuse_unreadable_classes(listing, checks, where)
    kept = ImageListing(class_names=listing.class_names)
    for path, label in zip(listing.files, listing.labels):
        if checks[path].readable:
            kept.files.append(path)
            kept.labels.append(label)
    limit = large_image_limit()
    large = frozenset(str(path) for path in kept.files if limit and checks[path].pixels > limit)
    return kept, large


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
    if split == "train":
        train_dir, val_dir = split_folders(root)
        train = list_split(train_dir)
    else:  # the train folder's listing again, for its class names: its warnings were said with the train split
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_dir, val_dir = split_folders(root)
            train = list_split(train_dir)
    note = ""
    if split == "val" and val_dir is not None:
        chosen, where = list_val_folder(val_dir, train.class_names), f"'{val_dir}'"
    elif val_dir is not None:
        chosen, where = train, f"'{train_dir}'"
    else:
        # Unreadable files go before the split, so the held-out share and the counts said are
        # of images (the val split's load checks the same files again: its warnings are the train's).
        with warnings.catch_warnings():
            if split == "val":
                warnings.simplefilter("ignore")
            readable, large = drop_unreadable(train, f"'{train_dir}'", every_class=True)
        held_train, held_val = hold_out(readable, train_dir, val_fraction, seed)
        chosen = held_val if split == "val" else held_train
        where = f"the {split} split held out of '{train_dir}'" if split == "val" else f"'{train_dir}'"
        note = (f"{len(held_val)} of the folder's {len(readable)} images held out for val: there is no val folder"
                if split == "train" else f"held out of the train images, {val_fraction:.0%} of each class")
        if not chosen.files:
            raise UserError(f"'{train_dir}' has {len(readable)} images: too few to hold out a val split "
                            f"(val_fraction={val_fraction}); add images or a '{root / 'val'}' folder.")
    if not chosen.files:
        raise UserError(f"No {split} images found in {where}.")
    if val_dir is not None:
        chosen, large = drop_unreadable(chosen, where, every_class=split == "train")
    # The source is printed in logs and stored as JSON: a folder name that is not UTF-8 is escaped.
    return FolderImageDataset(chosen, large, source=printable_name(str(root)), split=split, channels=channels,
                              image_size=image_size, flip=flip, note=note)
