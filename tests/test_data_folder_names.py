"""Image folders as they come out of the wild: names that are not UTF-8, split folders named
`Train`/`valid`/..., a `test` split, hidden class folders, a folder named like a built-in set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_data_folder import load_quietly, rgb_file

from ldmkit.data import load_image_dataset
from ldmkit.errors import UserError
from ldmkit.train.latent_cache import dataset_fingerprint

CAFE = os.fsdecode(b"caf\xe9")  # "café" in Latin-1, as zips made on Windows hold it: 'caf\udce9'


def not_utf8_folder(parent: Path) -> Path:
    folder = parent / CAFE
    try:
        folder.mkdir(parents=True)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    return folder


def images(folder: Path, count: int, stem: str = "") -> None:
    for index in range(count):
        rgb_file(folder / f"{stem}{index}.png", (40 * index, 0, 0), size=(4, 4))


def printable(text: str) -> bool:
    """Whether `text` can go to a UTF-8 terminal or file (surrogates cannot)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def test_class_folder_not_utf8_with_val_folder_loads_and_fingerprints(tmp_path: Path) -> None:
    images(not_utf8_folder(tmp_path / "train"), 3)
    images(tmp_path / "train" / "tea", 3)
    images(not_utf8_folder(tmp_path / "val"), 1)
    train, messages = load_quietly(tmp_path, "train", image_size=4)
    val, _ = load_quietly(tmp_path, "val", image_size=4)
    assert train.class_names == val.class_names == ["caf\\xe9", "tea"]
    assert val.as_label_tensor().tolist() == [0], "the val folder's class matches the train one"
    assert messages == [f"1 class folder name(s) of '{tmp_path / 'train'}' are not UTF-8 text; their bytes "
                        "are written as \\xNN in the class names: caf\\xe9."]
    assert printable(json.dumps(train.class_names, ensure_ascii=False)) and printable(train.describe())
    assert dataset_fingerprint(train) != dataset_fingerprint(val)  # raised UnicodeEncodeError before


def test_names_not_utf8_without_val_folder_hold_out(tmp_path: Path) -> None:
    images(not_utf8_folder(tmp_path), 6)
    images(tmp_path / "tea", 6, stem=CAFE)  # file names not UTF-8 either
    splits = [load_quietly(tmp_path, split, image_size=4, val_fraction=0.3)[0] for split in ("train", "val")]
    assert [len(split) for split in splits] == [8, 4] and not set(splits[0].files) & set(splits[1].files)
    assert splits[0].class_names == ["caf\\xe9", "tea"]
    assert all(len(dataset_fingerprint(split)) == 64 for split in splits)


def test_dataset_root_not_utf8_prints(tmp_path: Path) -> None:
    root = not_utf8_folder(tmp_path)
    images(root, 3)
    dataset, _ = load_quietly(root, image_size=4, val_fraction=0.3)
    assert dataset.source == str(tmp_path / "caf\\xe9") and printable(dataset.describe())


@pytest.mark.parametrize("train_name, val_name", [("Train", "Val"), ("training", "validation"),
                                                  ("train", "valid"), ("TRAIN", "Valid")])
def test_split_folders_any_case_and_alias(tmp_path: Path, train_name: str, val_name: str) -> None:
    for cls in ("a", "b"):
        images(tmp_path / train_name / cls, 3)
        images(tmp_path / val_name / cls, 1)
    train, messages = load_quietly(tmp_path, "train", image_size=4)
    val, _ = load_quietly(tmp_path, "val", image_size=4)
    assert train.class_names == ["a", "b"] and len(train) == 6 and not messages
    assert {Path(f).parent.parent.name for f in val.files} == {val_name} and len(val) == 2


@pytest.mark.parametrize("names", [("val", "valid"), ("val", "Val"), ("train", "Training")])
def test_two_folders_for_one_split_is_user_error(tmp_path: Path, names: tuple[str, str]) -> None:
    for name in ("train", "val") + names:
        images(tmp_path / name / "a", 2)
    if len({p.name for p in tmp_path.iterdir()}) < len(set(("train", "val") + names)):
        pytest.skip("this file system ignores case in names")
    with pytest.raises(UserError, match=f"'{names[0]}' and '{names[1]}'|'{names[1]}' and '{names[0]}'"):
        load_image_dataset(tmp_path, image_size=4)


def test_test_folder_beside_train_is_reported(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        images(tmp_path / split / "a", 2)
    (tmp_path / "labels").mkdir()  # no images: nothing to say
    dataset, messages = load_quietly(tmp_path, image_size=4)
    assert dataset.class_names == ["a"]
    assert messages == [f"Not reading 1 folder(s) of '{tmp_path}' that hold images: test (beside the split "
                        "folders, only train and val are read)."]
    val, messages = load_quietly(tmp_path, "val", image_size=4)  # said once per run, with the train split
    assert len(val) == 2 and messages == []


@pytest.mark.parametrize("name", ["test", "Validation"])
def test_split_folder_without_train_is_user_error(tmp_path: Path, name: str) -> None:
    images(tmp_path / name, 2)
    images(tmp_path / "cats", 2)
    with pytest.raises(UserError, match=f"has a '{name}' folder but no 'train' folder"):
        load_image_dataset(tmp_path, image_size=4)


def test_hidden_class_folder_is_reported_and_junk_files_are_not(tmp_path: Path) -> None:
    images(tmp_path / "train" / "cats", 2)
    images(tmp_path / "train" / ".hidden", 2)
    for junk in (".DS_Store", "Thumbs.db", "._0.png", "desktop.ini"):
        (tmp_path / "train" / "cats" / junk).write_bytes(b"\0junk")
        (tmp_path / "train" / "dogs" / junk).parent.mkdir(exist_ok=True)
        (tmp_path / "train" / "dogs" / junk).write_bytes(b"\0junk")
    dataset, messages = load_quietly(tmp_path, image_size=4, val_fraction=0.5)
    assert dataset.class_names == ["cats"] and len(dataset) == 1  # the other one held out for val
    assert messages == [
        f"Ignoring 1 hidden folder(s) of '{tmp_path / 'train'}' that hold images: .hidden (a name starting "
        "with '.' hides it; rename it to use it).",
        f"Ignoring 1 class folder(s) of '{tmp_path / 'train'}' with no images: dogs.",  # junk: not counted
    ]


@pytest.mark.parametrize("folder_exists", [True, False])
def test_builtin_name_warns_when_a_folder_has_it(tmp_path: Path, monkeypatch, folder_exists: bool) -> None:
    monkeypatch.chdir(tmp_path)
    if folder_exists:
        images(tmp_path / "emoji" / "mine", 2)
    dataset, messages = load_quietly("emoji", image_size=8)
    assert dataset.num_classes == 10, "the built-in set still wins"
    expected = ["using the built-in emoji dataset; for the folder ./emoji write --data ./emoji."]
    assert messages == (expected if folder_exists else [])
    folder, _ = load_quietly("./emoji", image_size=8, val_fraction=0.5) if folder_exists else (None, None)
    assert folder is None or folder.class_names == ["mine"]
