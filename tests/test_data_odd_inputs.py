"""Odd inputs a user-tester found mishandled: class names that are numbers, differ in case or
are decomposed Unicode; truncated JPEGs; photo formats this Pillow cannot read; links to a
folder above; named pipes; palette images fitted for img2img; huge start images; "~" paths."""

from __future__ import annotations

import argparse
import os
import types
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_folder import load_quietly, rgb_file

from ldmkit.cli import expand_home
from ldmkit.data import load_image_dataset
from ldmkit.data.class_names import match_class_name
from ldmkit.data.decode import inspect_image_file, is_image_file, resize_center_crop
from ldmkit.data.folder import FolderImageDataset
from ldmkit.data.folder_layout import ImageListing
from ldmkit.errors import UserError
from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.pipeline_args import open_image


def both_splits(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """(files, labels) of train and val held out of it together, and what loading said."""
    train, said = load_quietly(str(folder), "train", image_size=8)
    val, _ = load_quietly(str(folder), "val", image_size=8)
    return train.files + val.files, train.labels + val.labels, said


def class_id(names: list[str], typed):
    model = types.SimpleNamespace(num_classes=len(names), class_names=names, takes_text=False)
    return LatentDiffusionPipeline.class_id(model, typed)


def test_a_class_name_wins_over_an_id_and_case_is_exact_first():
    numbers = sorted(str(i) for i in range(1, 11))  # folder order: 1, 10, 2, ..., 9
    assert class_id(numbers, "1") == 0 and class_id(numbers, "10") == 1  # "1" typed meant the class "1"
    assert class_id(numbers, 1) == 1  # an int is an id (the Python API)
    letters = ["A", "B", "a", "b"]
    assert [class_id(letters, c) for c in ("A", "B", "a", "b")] == [0, 1, 2, 3]  # "a" was class 0
    assert class_id(["Flags", "Travel"], "flags") == 0
    with pytest.raises(UserError, match="could be any of"):
        match_class_name("ab", ["aB", "Ab"])
    assert class_id(["1.5", "a", "b"] + [f"c{i}" for i in range(13)], "15") == 15  # an id, not "1.5"
    assert class_id(["T-shirt/top", "Bag"], "t-shirt_TOP") == 0  # a file tag's spelling
    for typed in ("²", "-1", "--1", "1.0", "٣"):  # digits to str.isdigit, not ids: one line, no traceback
        with pytest.raises(UserError, match="unknown class"):
            class_id(["cat", "dog", "owl", "fox"], typed)


def test_decomposed_unicode_folder_names_are_stored_composed(tmp_path):
    decomposed = unicodedata.normalize("NFD", "café")
    for name in (decomposed, "tea"):
        for i in range(3):
            rgb_file(tmp_path / "d" / name / f"{i}.png", (10 * i, 0, 0))
    dataset, _ = load_quietly(str(tmp_path / "d"), "train", image_size=8)
    assert dataset.class_names == ["café", "tea"] and dataset.class_names[0] == unicodedata.normalize("NFC", "café")
    assert class_id(dataset.class_names, decomposed) == 0  # typed as macOS writes it


def test_a_val_folder_without_a_train_class_is_said(tmp_path):
    for split, names in (("train", ("cats", "dogs")), ("val", ("cats",))):
        for name in names:
            for i in range(2):
                rgb_file(tmp_path / split / name / f"{i}.png", (200, 10 * i, 0))
    _, said = load_quietly(str(tmp_path), "val", image_size=8)
    assert any("no images of the train class(es) dogs" in line for line in said), said


def truncated_jpeg(path: Path, colour=(200, 30, 30)) -> Path:
    rgb = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    rgb[..., 0] = colour[0]
    Image.fromarray(rgb).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 4 // 5])  # headers whole: PIL's verify() passed it
    return path


def test_truncated_jpegs_are_found_before_training(tmp_path):
    folder = tmp_path / "d"
    rgb_file(folder / "blue" / "0.png", (0, 0, 255))
    for i in range(3):
        (folder / "red").mkdir(parents=True, exist_ok=True)
        truncated_jpeg(folder / "red" / f"{i}.jpg")  # an interrupted download: the whole class
    assert not inspect_image_file(folder / "red" / "0.jpg").readable
    with pytest.raises(UserError, match="Class 'red' .* no readable image"):
        load_quietly(str(folder), "train", image_size=8)
    whole = tmp_path / "whole.jpg"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(whole)
    whole.write_bytes(whole.read_bytes() + b"camera trailer" * 10)  # data after the end marker is fine
    assert inspect_image_file(whole).readable


def test_a_file_that_fails_later_is_replaced_by_one_of_its_own_class(tmp_path):
    red = rgb_file(tmp_path / "red0.png", (255, 0, 0))
    broken = tmp_path / "red1.png"
    broken.write_bytes(b"not an image")  # passed the first check, then went bad
    blue = rgb_file(tmp_path / "blue0.png", (0, 0, 255))
    listing = ImageListing([red, broken, blue], [0, 0, 1], ["red", "blue"])
    dataset = FolderImageDataset(listing, source="t", split="train", channels=3, image_size=8, flip=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image, label = dataset.load_uint8(1)
    assert label == 0 and image[0].float().mean() > 250 and image[2].float().mean() < 5  # red, not blue
    lone = FolderImageDataset(ImageListing([broken, blue], [0, 1], ["red", "blue"]), source="t", split="train",
                              channels=3, image_size=8, flip=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image, label = lone.load_uint8(0)  # no red image decodes: another class's, under its own label
    assert label == 1 and image[2].float().mean() > 250


def test_the_latent_cache_keeps_a_substitute_under_its_own_label(tmp_path):
    from ldmkit.models import VAE_PRESETS, AutoencoderKL
    from ldmkit.train.distributed import DistInfo
    from ldmkit.train.latent_cache import encode_dataset

    broken = tmp_path / "red1.png"
    broken.write_bytes(b"not an image")  # the only red image, gone bad after the first check
    blue = rgb_file(tmp_path / "blue0.png", (0, 0, 255))
    dataset = FolderImageDataset(ImageListing([broken, blue, blue], [0, 1, 1], ["red", "blue"]), source="t",
                                 split="train", channels=3, image_size=8, flip=False)
    vae = AutoencoderKL(VAE_PRESETS["tiny"](block_channels=(8, 16), norm_groups=4, mid_attention=False)).eval()
    single = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latents = encode_dataset(vae, dataset, limit=None, flip=False, batch_size=2, dist=single)
    assert latents.labels.tolist() == [1, 1, 1]  # the blue image that stood in for red0, as blue
    assert torch.equal(latents.mean[0], latents.mean[1])


def test_photo_formats_this_pillow_cannot_read_are_named(tmp_path):
    assert is_image_file(Path("x.jpe")) and is_image_file(Path("x.PPM"))
    for i in range(2):
        rgb_file(tmp_path / "d" / "a" / f"{i}.png", (0, 0, 200))
    Image.new("RGB", (8, 8), (5, 5, 5)).save(tmp_path / "d" / "a" / "2.ppm")
    (tmp_path / "d" / "a" / "IMG_1.cr2").write_bytes(b"raw")
    files, _, said = both_splits(tmp_path / "d")
    assert len(files) == 3  # the .ppm is read
    assert any("cannot read (.cr2" in line and "IMG_1.cr2" in line for line in said), said


def test_a_link_to_the_split_folder_does_not_pull_other_classes_in(tmp_path):
    for name, colour in (("cats", (200, 0, 0)), ("dogs", (0, 200, 0))):
        for i in range(2):
            rgb_file(tmp_path / "d" / name / f"{i}.png", colour)
    os.symlink(tmp_path / "d", tmp_path / "d" / "dogs" / "up")
    files, labels, said = both_splits(tmp_path / "d")
    dogs = [f for f, label in zip(files, labels) if label == 1]
    assert all("cats" not in f for f in dogs) and len(files) == 4
    assert any("a folder above the class" in line for line in said), said


def test_a_named_pipe_called_png_is_not_read(tmp_path):
    for i in range(2):
        rgb_file(tmp_path / "d" / "a" / f"{i}.png", (0, 0, 200))
    os.mkfifo(tmp_path / "d" / "a" / "pipe.png")  # opening it would wait for a writer forever
    files, _, _ = both_splits(tmp_path / "d")
    assert sorted(Path(f).name for f in files) == ["0.png", "1.png"]


def test_empty_data_and_a_train_folder_given_alone(tmp_path):
    with pytest.raises(UserError, match="data source is empty"):
        load_image_dataset("", "train", image_size=8)
    for split in ("train", "val"):
        for i in range(3):
            rgb_file(tmp_path / split / "a" / f"{i}.png", (9, 9, 9))
    _, said = load_quietly(str(tmp_path / "train"), "train", image_size=8)
    assert any("the 'val' folder beside it is not read" in line for line in said), said


def test_palette_and_one_bit_images_are_averaged_when_fitted():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    for image in (Image.fromarray(checker).convert("1"), Image.fromarray(checker).convert("P")):
        fitted = np.asarray(resize_center_crop(image, 16).convert("L"), dtype=np.float32)
        assert abs(fitted.mean() - 127.5) < 3, image.mode  # nearest neighbour made it all black


def test_a_start_image_over_pils_limit_is_one_line(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match="too large to decode safely"):
        open_image(tmp_path / "big.png", "--init-image")


def test_every_path_flag_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(out="~/runs/t", data="~/d", prompt="~not a path", init_image="~/x.png", grid=None)
    expand_home(args)
    assert (args.out, args.data, args.init_image) == (f"{tmp_path}/runs/t", f"{tmp_path}/d", f"{tmp_path}/x.png")
    assert args.prompt == "~not a path" and args.grid is None


def test_latent_encoding_says_how_far_it_is(monkeypatch):
    from ldmkit.models import VAE_PRESETS, AutoencoderKL
    from ldmkit.train import latent_cache
    from ldmkit.train.distributed import DistInfo

    monkeypatch.setattr(latent_cache, "REPORT_EVERY_S", 0.0)
    dataset = load_image_dataset("emoji", "val", image_size=8)
    vae = AutoencoderKL(VAE_PRESETS["tiny"](block_channels=(8, 16), norm_groups=4, mid_attention=False)).eval()
    lines: list[str] = []
    single = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    latent_cache.encode_dataset(vae, dataset, limit=24, flip=False, batch_size=8, dist=single, report=lines.append)
    assert lines[-2].startswith("encoded 16 of 24 images") and lines[-1].startswith("encoded 24 images in"), lines


def test_checking_many_files_shows_a_bar_on_a_terminal(tmp_path, monkeypatch):
    from ldmkit.data import folder

    for i in range(4):
        rgb_file(tmp_path / "d" / f"{i}.png", (9, 9, 9 * i))
    shown = []

    def bar(iterable, **options):
        shown.append((options["total"], options["disable"], options["desc"]))
        return iterable

    monkeypatch.setattr(folder, "tqdm", bar)
    monkeypatch.setattr(folder, "SHOW_CHECK_FROM", 3)
    load_quietly(str(tmp_path / "d"), "train", image_size=8)
    monkeypatch.setattr(folder, "SHOW_CHECK_FROM", 5000)
    monkeypatch.setattr(folder, "_last_inspected", None)  # the same files: else their checks are reused
    load_quietly(str(tmp_path / "d"), "train", image_size=8)
    # None: tqdm's "on a terminal only" (a log file gets no bar); True: no bar for a few files
    # all 4 files: without a val folder they are checked before one is held out
    assert [(total, disable) for total, disable, _ in shown] == [(4, None), (4, True)]
    assert "checking the files of" in shown[0][2]


def test_classes_one_folder_too_deep_are_said(tmp_path):
    for name in ("cats", "dogs"):
        for i in range(2):
            rgb_file(tmp_path / "d" / "train" / "images" / name / f"{i}.png", (9, 9, 9 * i))
    dataset, said = load_quietly(str(tmp_path / "d"), "train", image_size=8)
    assert dataset.class_names == ["images"]
    assert any("one class folder, 'images', whose subfolders cats, dogs" in line for line in said), said


def test_a_run_with_decomposed_class_names_resumes(tmp_path):
    from ldmkit.train.resume_settings import check_same_classes

    stored = [unicodedata.normalize("NFD", "Café"), "Tea"]  # what a run from before NFC names recorded
    check_same_classes(stored, ["Café", "Tea"], tmp_path, "data")
    with pytest.raises(UserError, match="was trained on"):
        check_same_classes(stored, ["Cafe", "Tea"], tmp_path, "data")


def test_one_class_whose_images_lie_behind_a_link(tmp_path):
    for i in range(3):
        rgb_file(tmp_path / "elsewhere" / f"{i}.png", (9, 9, 9 * i))
    (tmp_path / "d" / "train" / "real").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", tmp_path / "d" / "train" / "real" / "imgs")
    dataset, _ = load_quietly(str(tmp_path / "d"), "train", image_size=8)  # was StopIteration
    assert dataset.class_names == ["real"]
