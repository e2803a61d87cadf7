"""`ldm eval` by the training data's rules (a user-testing report): class names in any script or
case matched to the right class, a model or classifier whose names macOS wrote decomposed taken
as the data's, everything that needs no real image refused before a real image is decoded (and
only the real images used decoded, checked to fit in memory first, behind a progress bar),
sample folders read like data folders (.PNG, hidden files, ldm generate's grids, a file given for
the folder), and a val split that lacks a class said out loud."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_eval_cli import MODEL_CLASSES, QUICK, make_folder_data, model_file  # noqa: F401 (fixture)

from ldmkit.cli import main
from ldmkit.cli.eval import data_ids_of_model_classes
from ldmkit.data.folder import FolderImageDataset
from ldmkit.errors import UserError
from ldmkit.eval import ClassifierConfig, ClassifierNet, read_sample_folder, save_classifier, write_samples_info

NFD_CAFE, NFC_CAFE = "cafe\u0301", "caf\u00e9"  # "café" as macOS writes a folder name, and composed


def _png(path: Path, size: int = 8, level: int = 0, **save) -> Path:
    Image.new("RGB", (size, size), (level, level, level)).save(path, "PNG", **save)
    return path


def _samples(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        _png(folder / name, level=10 * i)
    return folder


def _classifier(path: Path, class_names: list[str]) -> Path:
    """An untrained classifier of `class_names` for 16 px RGB (enough to give features)."""
    config = ClassifierConfig(in_channels=3, num_classes=len(class_names), image_size=(16, 16), widths=(8, 16),
                              class_names=list(class_names))
    save_classifier(ClassifierNet(config), path)
    return path


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """The indices of the real folder images decoded, in order."""
    seen: list[int] = []
    real_load = FolderImageDataset.load_uint8

    def counting(self, index):
        seen.append(index)
        return real_load(self, index)

    monkeypatch.setattr(FolderImageDataset, "load_uint8", counting)
    return seen


# 1. class names -------------------------------------------------------------------------------

def test_class_names_in_other_scripts_are_matched_not_read_as_class_0(tmp_path):
    data_classes = ["кошка", "犬", "猫"]  # letters, but none of them a-z: each once became ""
    named = _samples(tmp_path / "named", ["00000_class-猫.png", "00001_class-犬.png", "00002_class-кошка.png"])
    assert read_sample_folder(named, class_names=data_classes).labels.tolist() == [2, 1, 0]
    ids = _samples(tmp_path / "ids", ["00000_class0.png", "00001_class1.png", "00002_class2.png"])
    write_samples_info(ids, ["猫", "犬", "кошка"], {})  # the model's order
    assert read_sample_folder(ids, class_names=data_classes).labels.tolist() == [2, 1, 0]


def test_classes_that_differ_only_in_case_are_told_apart(tmp_path):
    data_classes = ["A", "B", "a", "b"]
    named = _samples(tmp_path / "named", ["00000_class-a.png", "00001_class-B.png", "00002_class-b.png"])
    assert read_sample_folder(named, class_names=data_classes).labels.tolist() == [2, 1, 3]
    ids = _samples(tmp_path / "ids", ["00000_class0.png", "00001_class1.png"])
    write_samples_info(ids, ["a", "b"], {})  # a model of the lower-case classes only
    assert read_sample_folder(ids, class_names=data_classes).labels.tolist() == [2, 3]
    unsure = _samples(tmp_path / "unsure", ["00000_class-ab.png"])
    with pytest.raises(UserError, match=r"00000_class-ab.png: the class 'ab' could be any of 0=Ab, 1=aB"):
        read_sample_folder(unsure, class_names=["Ab", "aB"])  # neither written exactly: never a guess
    with pytest.raises(UserError, match=r"00000_class-ab.png: unknown class 'ab'"):
        read_sample_folder(unsure, class_names=["A", "B"])


def test_decomposed_class_names_are_the_same_classes():
    assert data_ids_of_model_classes([NFD_CAFE, "tea"], ["tea", NFC_CAFE]) == [1, 0]


def test_a_classifier_of_decomposed_names_is_the_datas(tmp_path):
    data = make_folder_data(tmp_path / "data", [NFC_CAFE, "tea"], per_class=(3, 3))
    classifier = _classifier(tmp_path / "classifier.safetensors", [NFD_CAFE, "tea"])
    _samples(tmp_path / "s", [f"{i:05d}_class{i % 2}.png" for i in range(4)])
    for path in (tmp_path / "s").iterdir():
        _png(path, size=16)
    assert main(["eval", "--samples", str(tmp_path / "s"), "--data", str(data), "--classifier", str(classifier),
                 "--features", "classifier", "--k", "1", "--kid-subsets", "2", "--kid-subset-size", "2",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "r.json")]) == 0


# 2. nothing decoded before the checks, and only what is used ------------------------------------

def test_missing_inception_weights_are_refused_before_a_real_image_is_decoded(tmp_path, capsys, decoded):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 3, 16, 16), np.uint8))
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--data", str(data), "--features", "inception",
                 "--inception-weights", str(tmp_path / "nope.pth"), "--k", "1", "--device", "cpu",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "Inception weights not found" in capsys.readouterr().err
    assert decoded == []
    shutil.rmtree(data)  # nor listed: refused before the data is looked at
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--data", str(data), "--features", "inception",
                 "--inception-weights", str(tmp_path / "nope.pth"), "--device", "cpu",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "Inception weights not found" in capsys.readouterr().err


def test_a_model_of_other_classes_is_refused_before_the_data_is_read(model_file, tmp_path, capsys,  # noqa: F811
                                                                    decoded, monkeypatch):
    import ldmkit.data.folder as folder

    checked = []
    real_check = folder.drop_unreadable

    def counting(listing, *args, **kwargs):
        checked.append(listing)
        return real_check(listing, *args, **kwargs)

    monkeypatch.setattr(folder, "drop_unreadable", counting)
    data = make_folder_data(tmp_path / "data", ["cats", "dogs"])
    assert main(["eval", "--model", str(model_file), "--data", str(data), *QUICK, "--out",
                 str(tmp_path / "r.json")]) == 2
    assert "the model's classes (red, green, blue) are not the data's (cats, dogs)" in capsys.readouterr().err
    assert decoded == [] and checked == []  # known from the folder's listing alone


def test_real_images_that_would_not_fit_in_memory_are_refused_before_decoding(tmp_path, capsys, decoded,
                                                                             monkeypatch):
    import ldmkit.data.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 3, 16, 16), np.uint8), labels=np.arange(4) % 3)
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--data", str(data), *QUICK,
                 "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "error: the 36 real images of" in err and "more than the 1000 bytes available here" in err
    assert "--classifier, without --train-classifier" in err and len(err.splitlines()) == 1
    assert decoded == []


def test_only_the_real_training_images_used_are_decoded_with_a_progress_bar(tmp_path, capsys, decoded):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)  # 24 training, 12 test images
    classifier = _classifier(tmp_path / "classifier.safetensors", ["blue", "green", "red"])
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 3, 16, 16), np.uint8), labels=np.arange(4) % 3)
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--data", str(data), "--classifier", str(classifier),
                 "--features", "classifier", "--k", "1", "--kid-subsets", "2", "--kid-subset-size", "2",
                 "--device", "cpu", "--out", str(tmp_path / "r.json")]) == 0
    assert len(decoded) == 4 + 12  # the baseline's 4 training images (of 24) and every test image
    err = capsys.readouterr().err
    assert "reading the real train images" in err and "reading the real val images" in err


# 3. sample folders by the training data's rules ------------------------------------------------

def test_upper_case_png_is_a_sample_and_hidden_files_are_not(tmp_path):
    folder = _samples(tmp_path / "s", ["00000_seed0.PNG", "00001_seed1.png", "00002_seed2.Png"])
    (folder / "._00000_seed0.png").write_bytes(b"\x00\x05\x16\x07 a macOS resource fork")
    (folder / ".hidden.png").write_bytes(b"junk")
    samples = read_sample_folder(folder)
    assert [p.name for p in samples.paths] == ["00000_seed0.PNG", "00001_seed1.png", "00002_seed2.Png"]
    assert samples.seeds == [0, 1, 2]


def test_a_grid_of_ldm_generate_under_any_name_is_not_a_sample(tmp_path):
    from ldmkit.cli.generate_output import grid_pnginfo  # what ldm generate writes into its grids

    folder = _samples(tmp_path / "s", ["00000.png", "00001.png"])
    _png(folder / "overview.png", size=19, pnginfo=grid_pnginfo())
    assert [p.name for p in read_sample_folder(folder).paths] == ["00000.png", "00001.png"]


def test_ldm_generate_grid_inside_the_samples_folder_is_left_out(model_file, tmp_path):  # noqa: F811
    samples = tmp_path / "samples"
    assert main(["generate", "--model", str(model_file), "--n", "3", "--steps", "1", "--device", "cpu", "--quiet",
                 "--out", str(samples), "--grid", str(samples / "overview.png")]) == 0
    assert (samples / "overview.png").is_file()
    assert len(read_sample_folder(samples, class_names=MODEL_CLASSES).paths) == 3


def test_samples_of_two_sizes_name_a_file_of_each(tmp_path):
    folder = _samples(tmp_path / "s", ["00000.png", "00001.png"])
    _png(folder / "00002.png", size=12)
    with pytest.raises(UserError, match=r"differ in size \(00000.png is 8x8, 00002.png is 12x12\)"):
        read_sample_folder(folder)


def test_a_samples_path_that_is_a_file_must_be_a_folder(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    grid = _png(tmp_path / "grid.png", size=16)
    judge = ["eval", "--samples", str(grid), "--data", str(data), "--features", "classifier", "--device", "cpu",
             "--out", str(tmp_path / "r.json")]
    for size in ([], ["--image-size", "16"]):  # the size read off the samples, or given
        assert main([*judge, *size]) == 2
        err = capsys.readouterr().err
        assert f"--samples {grid} is a file: it must be a folder of sample PNGs" in err and "Traceback" not in err
    with pytest.raises(UserError, match="is a file: it must be a folder"):
        read_sample_folder(grid)
    upper = tmp_path / "S.NPZ"  # an .npz file in any case is one, not a folder given wrong
    upper.write_bytes(b"not an archive")
    assert main([*judge[:2], str(upper), *judge[3:], "--image-size", "16"]) == 2
    assert f"--samples {upper} is not a readable .npz file" in capsys.readouterr().err


# 4. a val split without some classes -----------------------------------------------------------

def test_classes_without_real_test_images_are_named(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    shutil.rmtree(data / "val" / "green")
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 3, 16, 16), np.uint8), labels=np.arange(4) % 3)
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--data", str(data), *QUICK, "--k", "1", "--quiet",
                 "--out", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert f"ldm eval: warning: 1 of the 3 classes have no real test images in the val split of {data} (green)" in err
    assert "has no images of the train class" not in err  # said once, in eval's words
