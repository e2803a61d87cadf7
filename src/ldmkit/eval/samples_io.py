"""Reading images for evaluation: folders of sample PNGs, and real datasets, as uint8.

Sample files are named `{index:05d}_seed{seed}_class{class_id}.png` (what `ldm generate`
writes, see `sample_filename`); `_class-{name}` with a class name is accepted too, and
both tags are optional. A folder is read by the training data's rules: `.png` in any case,
hidden files (macOS's `._x.png` resource forks) left out, and so are the grids `ldm generate`
writes (tagged `GRID_TAG`), wherever `--grid` put them. A class id in a file name is the id of
the model that made it, which need not be the evaluation data's: `ldm generate` writes the
model's class names beside the files (`samples.json`, with the job's settings; see
`write_samples_info`), and an id is matched to the data's class by that name.
Everything `ldm eval` compares is uint8 `[N, C, H, W]`, the form images take on disk, so generated
and real images are quantised the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ldmkit.atomic import atomic_write_text
from ldmkit.data.class_names import match_class_name
from ldmkit.data.decode import to_rgb
from ldmkit.data.images import to_uint8
from ldmkit.errors import UserError
from ldmkit.json_text import read_json_file
from ldmkit.thread_map import map_in_threads

__all__ = ["SampleSet", "sample_filename", "sample_paths", "read_sample_folder", "dataset_to_uint8",
           "write_samples_info", "read_samples_info", "read_sample_classes", "is_generate_grid", "SAMPLES_FILE",
           "GRID_FILE", "GRID_TAG"]

SAMPLES_FILE = "samples.json"  # beside generated samples: {"class_names": [name of id 0, ...], "settings": {...}}
GRID_FILE = "grid.png"  # `ldm generate`'s grid of the samples beside them, not a sample
# The PNG text chunk of every grid `ldm generate` writes (cli/generate_output.py): `--grid
# DIR/overview.png` puts one under any name, and it is not a sample either; only a tagged grid
# may be written over by another --grid.
GRID_TAG = ("Software", "ldmkit generate grid")
READ_THREADS = 4  # sample PNGs decoded at once (`_load_pngs`)

_SEED_TAG = re.compile(r"_seed(-?\d+)")
_CLASS_TAG = re.compile(r"_class(?:(\d+)|-(.+))$")  # last tag of the stem: id, or "-" + name


def sample_filename(index: int, seed: int | None = None, class_id: int | None = None) -> str:
    """The file name of sample `index`: `00012_seed12_class3.png` (tags optional)."""
    name = f"{index:05d}"
    if seed is not None:
        name += f"_seed{seed}"
    if class_id is not None:
        name += f"_class{class_id}"
    return name + ".png"


@dataclass
class SampleSet:
    """Images uint8 `[N, C, H, W]`, class ids int64 `[N]` (or None), seeds, source paths."""

    images: torch.Tensor
    labels: torch.Tensor | None
    seeds: list[int | None]
    paths: list[Path]


def write_samples_info(folder: str | Path, class_names: Sequence[str], settings: dict) -> Path:
    """Write, beside samples, the class names of the model that made them (the ids in their file
    names) and the job's settings (what `ldm generate --skip-existing` must match)."""
    text = json.dumps({"class_names": list(class_names), "settings": settings}, indent=1)
    return atomic_write_text(Path(folder) / SAMPLES_FILE, text)


def read_samples_info(folder: str | Path) -> dict | None:
    """What `write_samples_info` left in `folder` (`class_names`, `settings`), or None."""
    path = Path(folder) / SAMPLES_FILE
    if not path.is_file():
        return None
    try:
        info = read_json_file(path)
        names = info["class_names"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not ldmkit's description of the samples ({type(err).__name__}: {err}); remove "
                        "it to read the ids in the file names as the data's") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: 'class_names' must be a list of strings")
    if not isinstance(info.get("settings", {}), dict):
        raise UserError(f"{path}: 'settings' must be a JSON object (what ldm generate wrote there)")
    return info


def read_sample_classes(folder: str | Path) -> list[str] | None:
    """The class names of the model whose samples `folder` holds, or None when not written."""
    info = read_samples_info(folder)
    return None if info is None else info["class_names"]


def _data_class_id(path: Path, name: str, class_names: Sequence[str] | None) -> int:
    """The index of class `name` (of the sample at `path`) among the data's `class_names`: exact,
    else ignoring case, else letters and digits only ("T-shirt_top", a file tag, for "T-shirt/top"),
    never a guess between two (`match_class_name`): scripts without Latin letters and classes
    that differ only in case ("A", "a") are told apart."""
    if not class_names:
        raise UserError(f"{path.name} names its class ({name!r}) but no class names are known")
    try:
        found = match_class_name(name, class_names)
    except UserError as err:  # two classes match: say which file asked
        raise UserError(f"{path.name}: {err}") from None
    if found is None:
        raise UserError(f"{path.name}: unknown class {name!r}; the data's classes: {', '.join(class_names)}")
    return found


def _class_id(path: Path, class_names: Sequence[str] | None, id_names: Sequence[str] | None) -> int | None:
    """The class of the sample at `path` as an index into `class_names` (the data's)."""
    match = _CLASS_TAG.search(path.stem)
    if match is None:
        return None
    if match.group(1) is not None:
        sample_id = int(match.group(1))
        if not (id_names and class_names):  # nothing to translate the model's ids with
            return sample_id
        if sample_id >= len(id_names):
            raise UserError(f"{path.name}: class id {sample_id}, but the samples' model has {len(id_names)} classes "
                            f"({SAMPLES_FILE})")
        name = id_names[sample_id]
    else:
        name = match.group(2)
    return _data_class_id(path, name, class_names)


def _sort_key(path: Path) -> tuple[int, str]:
    # Numeric index first, so 100 sorts after 99 even without zero padding.
    digits = re.match(r"\d+", path.name)
    return (int(digits.group()) if digits else -1, path.name)


def _load_png(path: Path, channels: int) -> np.ndarray:
    """[C, H, W] uint8, by the training data's rules (`to_rgb`: 16-bit scaled, not clipped to
    white; transparency on white); a file that does not decode is named, not just PIL's words."""
    try:
        with Image.open(path) as image:
            rgb = to_rgb(image)
            array = np.asarray(rgb.convert("L") if channels == 1 else rgb)
    except (OSError, ValueError, SyntaxError) as err:  # truncated, corrupt, not an image
        raise UserError(f"sample {path} cannot be read ({err}); generate it again or remove it") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)  # [C, H, W]


def _load_pngs(paths: Sequence[Path], channels: int, threads: int = READ_THREADS) -> list[np.ndarray]:
    """`_load_png` of each path, in order, on `threads` threads: PNG decoding (zlib) releases the
    GIL, and a folder of 10,000 samples at 512 px takes about a minute to decode on one core. The
    first file that cannot be read (in order) is the error raised."""
    return map_in_threads(lambda path: _load_png(path, channels), paths, threads, "ldm-read")


def is_generate_grid(path: str | Path) -> bool:
    """Whether the PNG at `path` is a grid `ldm generate` wrote (it carries `GRID_TAG`)."""
    try:
        with Image.open(path) as image:  # reads the chunks before the pixels only
            return image.info.get(GRID_TAG[0]) == GRID_TAG[1]
    except (OSError, SyntaxError, ValueError):
        return False  # not an image: read as a sample, it is named as one that cannot be read


def _may_be_sample(path: Path) -> bool:
    # Any case of .png (some tools write .PNG); names starting with "." are hidden, as in the
    # training data: macOS's "._x.png" resource forks beside copied files are not images.
    return path.suffix.lower() == ".png" and not path.name.startswith(".") and path.name != GRID_FILE


def sample_paths(folder: Path, limit: int | None = None) -> list[Path]:
    """The sample PNGs in `folder`, sorted by index: every `.png` (any case) but hidden files,
    `grid.png` and grids tagged by `ldm generate`; the first `limit` of them when given."""
    named = sorted((p for p in folder.iterdir() if _may_be_sample(p) and p.is_file()), key=_sort_key)
    samples: list[Path] = []
    for path in named:  # a grid is known by its tag: opened one by one, up to the limit
        if limit is not None and len(samples) >= limit:
            break
        if not is_generate_grid(path):
            samples.append(path)
    return samples


def _check_one_size(folder: Path, paths: list[Path], arrays: list[np.ndarray]) -> None:
    """`UserError` naming one file of each size, when the samples are not all one size."""
    first_of_size: dict[tuple, Path] = {}
    for path, array in zip(paths, arrays):
        first_of_size.setdefault(array.shape, path)
    if len(first_of_size) > 1:
        sizes = ", ".join(f"{path.name} is {shape[2]}x{shape[1]}" for shape, path in first_of_size.items())
        raise UserError(f"samples in {folder} differ in size ({sizes}): keep the samples of one model, at one "
                        "size, in a folder of their own")


def check_sample_folder(folder: Path, flag: str = "sample folder") -> None:
    """`UserError` unless `folder` is a folder (a file given for it is told apart from nothing there)."""
    if folder.is_file():
        raise UserError(f"{flag} {folder} is a file: it must be a folder of sample PNGs (or an .npz file)")
    if not folder.is_dir():
        raise UserError(f"{flag} {folder} not found")


def read_sample_folder(
    folder: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    channels: int | None = None,
    limit: int | None = None,
    sample_class_names: Sequence[str] | None = None,
) -> SampleSet:
    """Read the PNGs of `folder` (`sample_paths`, sorted by index) into a `SampleSet`.

    `channels` forces 1 (grayscale) or 3 (RGB); by default the first image decides (mode
    "L" -> 1, anything else -> 3). Labels index `class_names` (the data's): a `_class-{name}`
    tag by its name, a `_class{id}` tag by the name of its id among the samples' model's classes
    (the folder's `samples.json`, else `sample_class_names`, else the id is taken as the data's
    own). Labels are None when no file carries a class tag; a folder where only some do is an error.
    """
    folder = Path(folder)
    check_sample_folder(folder)
    paths = sample_paths(folder, limit)
    if not paths:
        raise UserError(f"no .png files in {folder}")
    try:
        with Image.open(paths[0]) as first:
            first_mode, (width, height) = first.mode, first.size
    except (OSError, ValueError, SyntaxError):
        _load_png(paths[0], channels or 3)  # raises the one-line error that names the file
        raise
    if channels is None:
        channels = 1 if first_mode in ("L", "I", "I;16", "1") else 3
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")

    # Threads pay from about 128x128 up (512 px: 1.7x on 2 cores); below, each file's Python work
    # (which holds the GIL) outweighs its decoding, and one thread was faster (64 px: 0.14 against
    # 0.18 ms a file).
    arrays = _load_pngs(paths, channels, threads=READ_THREADS if width * height >= 128 * 128 else 1)
    _check_one_size(folder, paths, arrays)
    images = torch.from_numpy(np.stack(arrays))

    id_names = read_sample_classes(folder) or sample_class_names
    ids = [_class_id(p, class_names, id_names) for p in paths]
    tagged = sum(i is not None for i in ids)
    if 0 < tagged < len(ids):
        raise UserError(f"only {tagged} of {len(ids)} samples in {folder} have a _class tag")
    labels = torch.tensor(ids, dtype=torch.int64) if tagged else None
    seeds = [int(m.group(1)) if (m := _SEED_TAG.search(p.stem)) else None for p in paths]
    return SampleSet(images=images, labels=labels, seeds=seeds, paths=paths)


def dataset_to_uint8(dataset: Any, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 `[N, C, H, W]` and labels int64 `[N]` from a dataset of `(image, label)`.

    An `ldmkit.data.ImageDataset` hands over its stored uint8 images directly (never
    flipped). Any other dataset's items are float images in [-1, 1], quantised as a PNG
    writer would, so real and generated images meet the extractor in the same form; build
    such a dataset without random flips. `limit` keeps the first `limit` items.
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise UserError("the real dataset is empty")
    if hasattr(dataset, "as_uint8_tensor") and n == len(dataset):
        return dataset.as_uint8_tensor(), dataset.as_label_tensor()
    if hasattr(dataset, "load_uint8"):
        pairs = [dataset.load_uint8(i) for i in range(n)]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    subset = torch.utils.data.Subset(dataset, range(n))
    loader = torch.utils.data.DataLoader(subset, batch_size=1024, shuffle=False, num_workers=0)
    images, labels = [], []
    for x, y in loader:
        images.append(to_uint8(x))  # as a PNG writer quantises
        labels.append(torch.as_tensor(y, dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)
