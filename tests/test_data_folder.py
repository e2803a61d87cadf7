"""Image-folder datasets: layouts, image modes, bad files, splits, flips and user errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.data import load_image_dataset
from ldmkit.errors import UserError

SIZE = 8
WILD = (255, 0, 255)  # magenta: the colour hidden under transparent pixels


def rgb_file(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_odd_files(folder: Path) -> None:
    """One file of each awkward mode, each SIZE x SIZE so no resampling blurs the check."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (SIZE, SIZE), 100).save(folder / "gray.png")
    rgba = Image.new("RGBA", (SIZE, SIZE), WILD + (0,))  # fully transparent magenta ...
    rgba.paste((255, 0, 0, 255), (0, 0, SIZE // 2, SIZE))  # ... left half opaque red
    rgba.save(folder / "rgba.png")
    palette = Image.new("P", (SIZE, SIZE), 0)
    palette.putpalette(list(WILD) + [0, 0, 255] + [0] * 762)  # index 0 magenta (transparent), 1 blue
    palette.paste(1, (0, 0, SIZE // 2, SIZE))
    palette.save(folder / "palette.gif", transparency=0)
    Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)  # red
    Image.fromarray(np.full((SIZE, SIZE), 40000, dtype=np.uint16)).save(folder / "sixteen.png")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "notes.png").write_text("this is not an image")


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """DIR/train/{cats,dogs} (cats holds the odd files) and DIR/val/dogs."""
    root = tmp_path / "pets"
    write_odd_files(root / "train" / "cats")
    for index in range(3):
        rgb_file(root / "train" / "dogs" / f"dog{index}.png", (0, 80 * index, 0))
    rgb_file(root / "val" / "dogs" / "val_dog.jpeg", (0, 0, 200))
    return root


def load_quietly(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_image_dataset(*args, **kwargs)
    return dataset, [str(w.message) for w in caught]


def item_by_name(dataset, name: str) -> torch.Tensor:
    index = [Path(f).name for f in dataset.files].index(name)
    return dataset[index][0]


def test_class_folder_skips_bad_files_with_one_warning(class_folder: Path) -> None:
    dataset, messages = load_quietly(class_folder, image_size=SIZE, flip=False)
    assert len(messages) == 1 and "2 of the" in messages[0] and "skipping them" in messages[0]
    assert dataset.class_names == ["cats", "dogs"] and dataset.num_classes == 2
    assert len(dataset) == 5 + 3 and dataset.channels == 3 and dataset.image_size == SIZE
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every remaining file must decode without fallback
        items = [dataset[i] for i in range(len(dataset))]
    for image, label in items:
        assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
        assert -1.0 <= image.min() and image.max() <= 1.0
    assert sorted(label for _, label in items) == [0] * 5 + [1] * 3
    assert "pets [train]: 8 images, 3x8x8, 2 classes" in dataset.describe()


def test_image_modes_convert_to_rgb(class_folder: Path) -> None:
    dataset, _ = load_quietly(class_folder, image_size=SIZE, flip=False)
    to_pixels = lambda name: ((item_by_name(dataset, name) + 1) * 127.5).round()  # noqa: E731

    assert torch.all(to_pixels("gray.png") == 100)
    rgba = to_pixels("rgba.png")
    assert torch.all(rgba[:, :, SIZE // 2 :] == 255), "transparent pixels must come out white"
    assert rgba[:, :, : SIZE // 2].flatten(1).mean(1).tolist() == [255, 0, 0]
    gif = to_pixels("palette.gif")
    assert torch.all(gif[:, :, SIZE // 2 :] == 255)
    assert gif[:, :, : SIZE // 2].flatten(1).mean(1).tolist() == [0, 0, 255]
    red, green, blue = to_pixels("cmyk.jpg").flatten(1).mean(1).tolist()
    assert red > 200 and green < 60 and blue < 60
    assert torch.all(to_pixels("sixteen.png") == round(40000 / 257)), "16-bit must scale, not clip"


def test_resize_keeps_the_centre_square(tmp_path: Path) -> None:
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    # The central 20x20 square (x 10..30) is green, with a margin for the bicubic kernel.
    wide.paste((0, 255, 0), (6, 0, 34, 20))
    wide.save(tmp_path / "wide.png")
    image, label = load_image_dataset(tmp_path, "train", image_size=10, flip=False, val_fraction=0.5)[0]
    pixels = ((image + 1) * 127.5).round().flatten(1)
    assert label == -1 and pixels.mean(1).tolist() == [0, 255, 0]


def test_flat_folder_is_unconditional(tmp_path: Path) -> None:
    for index in range(4):
        rgb_file(tmp_path / f"img{index}.bmp", (index, 0, 0))
    dataset = load_image_dataset(tmp_path, image_size=4)
    assert dataset.class_names == [] and dataset.num_classes == 0
    assert {dataset[i][1] for i in range(len(dataset))} == {-1}
    assert dataset.as_uint8_tensor().shape == (len(dataset), 3, 4, 4)
    assert dataset.as_label_tensor().tolist() == [-1] * len(dataset)


def test_val_folder_uses_train_class_list(class_folder: Path) -> None:
    val, _ = load_quietly(class_folder, "val", image_size=SIZE)
    assert val.class_names == ["cats", "dogs"] and len(val) == 1
    assert val[0][1] == 1 and not val.flip, "val never flips"


def test_held_out_val_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        for index in range(20):
            rgb_file(tmp_path / cls / f"{index}.png", (index, 0, 0), size=(4, 4))
    splits = {}
    for split in ("train", "val"):
        first = load_image_dataset(tmp_path, split, image_size=4, val_fraction=0.25)
        again = load_image_dataset(tmp_path, split, image_size=4, val_fraction=0.25)
        assert first.files == again.files
        splits[split] = set(first.files)
    assert not splits["train"] & splits["val"]
    assert len(splits["val"]) == 10 and len(splits["train"]) == 30  # 25% of each class
    assert {Path(f).parent.name for f in splits["val"]} == {"a", "b"}
    other_seed = load_image_dataset(tmp_path, "val", image_size=4, val_fraction=0.25, seed=1)
    assert set(other_seed.files) != splits["val"]
    assert first.describe().endswith("10 images, 3x4x4, 2 classes (held out of the train images, 25% of each class)")
    train = load_image_dataset(tmp_path, "train", image_size=4, val_fraction=0.25, flip=False)
    assert train.describe().endswith("30 images, 3x4x4, 2 classes (10 of the folder's 40 images held out for val: "
                                     "there is no val folder)")


def test_the_log_line_counts_in_the_singular_too(tmp_path: Path) -> None:
    rgb_file(tmp_path / "train" / "only" / "0.png", (1, 2, 3), size=(4, 4))
    rgb_file(tmp_path / "val" / "only" / "0.png", (1, 2, 3), size=(4, 4))
    assert load_image_dataset(tmp_path, "val", image_size=4).describe().endswith(": 1 image, 3x4x4, 1 class")


def test_flip_off_is_deterministic_and_flip_on_mirrors(tmp_path: Path) -> None:
    image = Image.new("RGB", (4, 4), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 1, 4))  # white left column: not mirror-symmetric
    for index in range(3):
        image.save(tmp_path / f"{index}.png")
    fixed = load_image_dataset(tmp_path, image_size=4, flip=False)
    assert torch.equal(fixed[0][0], fixed[0][0])
    torch.manual_seed(0)
    flipping = load_image_dataset(tmp_path, image_size=4, flip=True)
    draws = {tuple(flipping[0][0][0, 0].tolist()) for _ in range(30)}
    assert draws == {(1.0, -1.0, -1.0, -1.0), (-1.0, -1.0, -1.0, 1.0)}


def test_file_broken_after_loading_is_replaced(tmp_path: Path) -> None:
    for index in range(3):
        rgb_file(tmp_path / f"{index}.jpg", (60 * index, 0, 0))
    dataset = load_image_dataset(tmp_path, image_size=4, flip=False, val_fraction=0.4)
    whole = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "0.jpg").write_bytes(whole[: len(whole) // 2])  # truncated JPEG: decode fails
    index = [Path(f).name for f in dataset.files].index("0.jpg")
    with pytest.warns(UserWarning, match="Could not decode"):
        image, _ = dataset[index]
    assert torch.equal(image, dataset[(index + 1) % len(dataset)][0])


@pytest.mark.parametrize("make", ["missing", "empty", "only_text", "a_file", "val_without_train"])
def test_unusable_sources_raise_user_error(tmp_path: Path, make: str) -> None:
    target = tmp_path / "data"
    if make == "empty":
        target.mkdir()
    elif make == "only_text":
        target.mkdir()
        (target / "readme.txt").write_text("no images here")
        (target / "sub").mkdir()
    elif make == "a_file":
        target.write_text("not a folder")
    elif make == "val_without_train":
        rgb_file(target / "val" / "x.png", (0, 0, 0))
    with pytest.raises(UserError, match=str(target).replace("\\", "\\\\")) as error:
        load_image_dataset(target, image_size=8)
    if make in ("empty", "only_text"):
        assert ".png" in str(error.value), "the message says what was looked for"


def test_all_files_unreadable_is_user_error(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"{index}.png").write_text("text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="could be read"):
            load_image_dataset(tmp_path, image_size=8)


@pytest.mark.parametrize("kwargs", [{"split": "test"}, {"image_size": 0}, {"channels": 2}, {"val_fraction": 1.5}])
def test_bad_arguments_raise_user_error(tmp_path: Path, kwargs: dict) -> None:
    rgb_file(tmp_path / "x.png", (0, 0, 0))
    arguments = {"image_size": 8} | kwargs
    with pytest.raises(UserError):
        load_image_dataset(tmp_path, **arguments)


def test_channels_one_gives_greyscale(class_folder: Path) -> None:
    dataset, _ = load_quietly(class_folder, image_size=SIZE, channels=1, flip=False)
    assert dataset.channels == 1 and dataset[0][0].shape == (1, SIZE, SIZE)


def test_empty_class_folder_is_dropped_with_a_warning(class_folder: Path) -> None:
    (class_folder / "train" / "birds").mkdir()
    (class_folder / "train" / "birds" / "notes.txt").write_text("to do: add birds")
    (class_folder / "train" / "fish").mkdir()
    dataset, messages = load_quietly(class_folder, image_size=SIZE)
    assert dataset.class_names == ["cats", "dogs"]
    assert [m for m in messages if "birds" in m] == [
        f"Ignoring 2 class folder(s) of '{class_folder / 'train'}' with no images: birds (holds 1 file(s), "
        "none with an image extension: .txt), fish."]


def test_symlink_loop_is_searched_once(tmp_path: Path) -> None:
    train = tmp_path / "train"
    for index in range(3):
        rgb_file(train / "red" / f"{index}.png", (200, 0, 0))
        rgb_file(train / "blue" / "deeper" / f"{index}.png", (0, 0, 200))
        rgb_file(train / "green" / "real" / f"{index}.png", (0, 200, 0))
    (train / "red" / "again").symlink_to(train / "red")  # a loop
    (train / "blue" / "deeper" / "up").symlink_to(train / "blue")  # a loop, from further down
    (train / "green" / "alias").symlink_to(train / "green" / "real")  # one folder reached twice
    files = [f for split in ("train", "val") for f in load_image_dataset(tmp_path, split, image_size=4).files]
    assert len(files) == 9 and len({Path(f).resolve() for f in files}) == 9  # each image once


def test_symlinked_class_folder_is_a_class(tmp_path: Path) -> None:
    for index in range(2):
        rgb_file(tmp_path / "elsewhere" / "green" / f"{index}.png", (0, 200, 0))
        rgb_file(tmp_path / "data" / "train" / "red" / f"{index}.png", (200, 0, 0))
    (tmp_path / "data" / "train" / "green").symlink_to(tmp_path / "elsewhere" / "green")
    dataset = load_image_dataset(tmp_path / "data", "train", image_size=4, val_fraction=0.5)
    assert dataset.class_names == ["green", "red"] and dataset.as_label_tensor().tolist() == [0, 1]
