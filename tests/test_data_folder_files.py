"""Files of an image folder: TIFF/JFIF extensions, files with other extensions, a class whose
files are all unreadable, and images over PIL's decompression-bomb limits."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image
from test_data_folder import load_quietly, rgb_file

from ldmkit.data import load_image_dataset
from ldmkit.errors import UserError


def test_tiff_and_jfif_files_are_images(tmp_path: Path) -> None:
    for index in range(2):
        rgb_file(tmp_path / "train" / "scans" / f"{index}.tif", (200, 0, 0))
        rgb_file(tmp_path / "train" / "scans" / f"{index}.TIFF", (200, 0, 0))
        (tmp_path / "train" / "photos").mkdir(exist_ok=True)
        Image.new("RGB", (6, 6), (0, 200, 0)).save(tmp_path / "train" / "photos" / f"{index}.jfif", "JPEG")
    rgb_file(tmp_path / "val" / "scans" / "v.tiff", (200, 0, 0))
    dataset, messages = load_quietly(tmp_path, image_size=4)
    assert dataset.class_names == ["photos", "scans"] and len(dataset) == 6 and not messages
    assert dataset[0][0].shape == (3, 4, 4)
    assert len(load_image_dataset(tmp_path, "val", image_size=4)) == 1


def test_class_folder_of_other_files_says_what_it_holds(tmp_path: Path) -> None:
    for index in range(2):
        rgb_file(tmp_path / "cats" / f"{index}.png", (0, 0, 0))
    for index in range(10):
        (tmp_path / "raw" / f"{index}.xyz").parent.mkdir(exist_ok=True)
        (tmp_path / "raw" / f"{index}.xyz").write_bytes(b"raw camera data")
    _, messages = load_quietly(tmp_path, image_size=4, val_fraction=0.5)
    assert messages == [f"Ignoring 1 class folder(s) of '{tmp_path}' with no images: raw (holds 10 file(s), "
                        "none with an image extension: .xyz)."]


def test_flat_folder_of_other_files_says_what_it_holds(tmp_path: Path) -> None:
    for name in ("a.xyz", "b.xyz", "c.heic", "README"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(UserError, match=r"class subfolders; it holds 4 file\(s\), none with an image "
                                        r"extension: \.heic, \.xyz, no extension\.$"):
        load_image_dataset(tmp_path, image_size=4)


@pytest.mark.parametrize("val_folder", [True, False])
def test_class_of_unreadable_files_is_refused(tmp_path: Path, val_folder: bool) -> None:
    train = tmp_path / "train" if val_folder else tmp_path
    for index in range(4):
        rgb_file(train / "ok" / f"{index}.png", (0, 100, 0))
        (train / "broken").mkdir(exist_ok=True)
        (train / "broken" / f"{index}.png").write_bytes(b"")  # zero-byte files, as a failed copy leaves
    if val_folder:
        rgb_file(tmp_path / "val" / "ok" / "v.png", (0, 100, 0))
    with warnings.catch_warnings():  # with or without a val folder, all four are checked before any split
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=f"^Class 'broken' of '{train}' has no readable image: of its 4 "
                                            "training files, 4 fail to decode"):
            load_image_dataset(tmp_path, image_size=4)


def test_class_of_images_too_large_is_refused_as_such(tmp_path: Path, monkeypatch) -> None:
    """Not "fail to decode": they are fine images, over PIL's decompression-bomb limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # PIL refuses above 300 pixels
    train = tmp_path / "train"
    for index in range(3):
        rgb_file(train / "ok" / f"{index}.png", (0, 100, 0), size=(10, 10))
    rgb_file(train / "huge" / "bomb.png", (200, 0, 0), size=(20, 20))
    (train / "huge" / "empty.png").write_bytes(b"")
    rgb_file(tmp_path / "val" / "ok" / "v.png", (0, 100, 0), size=(10, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=r"^Class 'huge' of .* has no readable image: of its 2 training files, "
                                            r"1 fails to decode \(empty.png\), and 1 is too large to decode safely "
                                            r"\(bomb.png 400 pixels; shrink them\); fix them or remove"):
            load_image_dataset(tmp_path, image_size=4)
        (train / "huge" / "empty.png").unlink()
        with pytest.raises(UserError, match=r"of its 1 training files, 1 is too large to decode safely"):
            load_image_dataset(tmp_path, image_size=4)


def test_large_images_are_named_with_their_size(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # PIL warns above 150 pixels, refuses above 300
    train = tmp_path / "train"
    for index in range(3):
        rgb_file(train / f"{index}.png", (0, 0, 0), size=(10, 10))
    rgb_file(train / "big.png", (200, 0, 0), size=(13, 13))  # 169 pixels
    rgb_file(train / "bomb.png", (200, 0, 0), size=(20, 20))  # 400 pixels
    rgb_file(tmp_path / "val" / "v.png", (0, 0, 0), size=(10, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_image_dataset(tmp_path, image_size=4, flip=False)
        big = [Path(f).name for f in dataset.files].index("big.png")
        assert dataset[big][0].shape == (3, 4, 4)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)], "PIL's, raw"
    assert [str(w.message) for w in caught] == [
        f"1 of the 5 files of '{train}' are too large to decode safely (over 300 pixels, PIL's "
        "decompression-bomb limit); skipping them (bomb.png 400 pixels): shrink them to use them.",
        f"1 image(s) of '{train}' are over 150 pixels (big.png 169 pixels): each is decoded whole whenever "
        "it is read, which is slow; shrinking them would speed up training.",
    ]
    assert "bomb.png" not in {Path(f).name for f in dataset.files}


def test_a_folder_gone_mid_run_is_one_user_error_also_from_a_worker(tmp_path: Path) -> None:
    """Every image gone (the data folder removed during training) was a RuntimeError, and from a
    DataLoader worker the worker's whole traceback came inside the message."""
    import shutil

    import torch

    from ldmkit.train.distributed import DistInfo
    from ldmkit.train.batches import IndexStream
    from ldmkit.train.image_batches import training_batches

    for k in range(3):
        rgb_file(tmp_path / "data" / "train" / "a" / f"{k}.png", (200, 10, 10))
    dataset, _ = load_quietly(tmp_path / "data", "train", image_size=4)
    shutil.rmtree(tmp_path / "data")
    one = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    for workers in (0, 1):
        batches = training_batches(dataset, stream=IndexStream(len(dataset), 0), offset=0, batch_size=2, dist=one,
                                   num_workers=workers)
        with pytest.warns(UserWarning) if workers == 0 else warnings.catch_warnings():
            with pytest.raises(UserError) as caught:
                next(batches)
        message = str(caught.value)
        assert "could not be read" in message and "is the data still there?" in message, message
        assert "Traceback" not in message and "\n" not in message, message


def test_unreadable_files_go_before_the_val_split_is_held_out(tmp_path: Path) -> None:
    """They were counted as images and could be held out for val, which then had fewer than said."""
    from ldmkit.data import folder

    for index in range(10):
        rgb_file(tmp_path / "a" / f"{index}.png", (0, 100, 0))
        rgb_file(tmp_path / "b" / f"{index}.png", (100, 0, 0))
    for index in range(4):
        (tmp_path / "a" / f"bad{index}.png").write_bytes(b"not an image")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        train = load_image_dataset(tmp_path, "train", image_size=4)
        val = load_image_dataset(tmp_path, "val", image_size=4)
    assert len(train) + len(val) == 20 and len(val) == 2  # a tenth of each class's 10 images
    assert "2 of the folder's 20 images held out for val" in train.describe()
    assert [str(w.message).split(";")[0] for w in said] == [
        f"4 of the 24 files of '{tmp_path}' are not readable images"]  # once: the val split's load says nothing
    assert folder._last_inspected is not None  # the val split reused the train split's checks
