"""`ldm eval --model`: samples generated from a model, judged against a real folder dataset, one
report per guidance scale; the model's classes matched to the data's by name, and a model of
other data refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_class_model

from ldmkit.cli import main
from ldmkit.cli.eval import data_ids_of_model_classes
from ldmkit.errors import UserError

MODEL_CLASSES = ["red", "green", "blue"]  # the folders sort as blue, green, red: ids differ by name
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
QUICK = ["--features", "classifier", "--train-classifier", "--classifier-epochs", "1", "--kid-subsets", "2",
         "--kid-subset-size", "3", "--device", "cpu"]  # a one-epoch classifier, tiny KID subsets


def make_folder_data(root: Path, classes: list[str], per_class: tuple[int, int] = (8, 4)) -> Path:
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            colour = np.array(COLOURS.get(name, (128, 128, 128)), dtype=np.int16)
            for i in range(count):
                pixels = np.clip(colour + rng.integers(-30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_tiny_class_model(tmp_path_factory.mktemp("model") / "model.safetensors", MODEL_CLASSES)


def test_labels_follow_the_class_names_not_the_ids():
    assert data_ids_of_model_classes(MODEL_CLASSES, ["blue", "green", "red"]) == [2, 1, 0]
    assert data_ids_of_model_classes(MODEL_CLASSES, MODEL_CLASSES) == [0, 1, 2]
    with pytest.raises(UserError, match=r"the model's classes \(red, green, blue\) are not the data's \(a, b\)"):
        data_ids_of_model_classes(MODEL_CLASSES, ["a", "b"])


def test_eval_generates_and_reports_each_guidance_scale(model_file, tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    report = tmp_path / "report.json"
    code = main(["eval", "--model", str(model_file), "--data", str(data), "--n", "6", "--steps", "2",
                 "--cfg", "1", "2", "--vae", *QUICK, "--out", str(report)])
    assert code == 0
    err = capsys.readouterr().err
    assert "generating (cfg 1)" in err and "generating (cfg 2)" in err  # a progress bar per scale
    result = json.loads(report.read_text())
    assert [run["cfg"] for run in result["results"]] == [1.0, 2.0]
    for run in result["results"]:
        assert {"FD_classifier", "KID_classifier"} <= set(run["metrics"])
        assert 0 <= run["metrics"]["class_accuracy"]["model"] <= 1
    assert result["vae"]["psnr"] > 0 and (tmp_path / "classifier.safetensors").is_file()


def test_on_a_cpu_eval_works_in_batches_of_64(model_file, tmp_path, monkeypatch):
    """Batches of 500 (the GPU's default) held ~2.5 GB on a CPU and ran no faster there."""
    from ldmkit.eval.extractor import FeatureExtractor
    from ldmkit.pipeline import LatentDiffusionPipeline

    batches = {}
    generate, extractor_init = LatentDiffusionPipeline.generate_uint8, FeatureExtractor.__init__

    def recorded_generate(self, *args, **kwargs):
        batches["generation"] = kwargs["batch_size"]
        return generate(self, *args, **kwargs)

    def recorded_init(self, device=None, batch_size=500):
        batches[type(self).__name__] = batch_size
        extractor_init(self, device, batch_size)

    monkeypatch.setattr(LatentDiffusionPipeline, "generate_uint8", recorded_generate)
    monkeypatch.setattr(FeatureExtractor, "__init__", recorded_init)
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    assert main(["eval", "--model", str(model_file), "--data", str(data), "--n", "3", "--steps", "1", "--k", "1",
                 "--device", "cpu", *QUICK, "--out", str(tmp_path / "r.json")]) == 0
    assert batches == {"generation": 64, "ClassifierFeatures": 64}


def test_eval_quiet_draws_no_bar(model_file, tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    assert main(["eval", "--model", str(model_file), "--data", str(data), "--n", "3", "--steps", "1", "--k", "1",
                 *QUICK, "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    assert "generating" not in capsys.readouterr().err


def test_a_model_of_other_data_is_refused_before_any_work(model_file, tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", ["cats", "dogs"])
    code = main(["eval", "--model", str(model_file), "--data", str(data), "--train-classifier", "--device", "cpu",
                 "--out", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "the model's classes (red, green, blue) are not the data's (cats, dogs)" in err
    assert not (tmp_path / "classifier.safetensors").exists()  # no classifier trained first


def test_class_accuracy_reads_the_models_ids_by_name(model_file, tmp_path, monkeypatch):
    """The accuracy's labels are the data's ids for the model's class names: a model whose class
    `red` is id 0 is judged against the data's `red`, id 2."""
    import ldmkit.eval as eval_package

    seen = {}
    real_evaluate = eval_package.evaluate

    def record(images, fake_labels, *args, **kwargs):
        seen["labels"] = fake_labels.tolist()
        return real_evaluate(images, fake_labels, *args, **kwargs)

    monkeypatch.setattr(eval_package, "evaluate", record)
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    assert main(["eval", "--model", str(model_file), "--data", str(data), "--n", "3", "--steps", "1", "--k", "1",
                 *QUICK, "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    assert seen["labels"] == [2, 1, 0]  # plan(3): one per model class, red, green, blue


def test_a_classifier_of_other_classes_is_refused(model_file, tmp_path, capsys):
    colours = make_folder_data(tmp_path / "colours", MODEL_CLASSES)
    assert main(["eval", "--model", str(model_file), "--data", str(colours), "--n", "3", "--steps", "1", "--k", "1",
                 *QUICK, "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    pets = make_folder_data(tmp_path / "pets", ["cats", "dogs"])
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 3, 16, 16), np.uint8), labels=np.arange(4) % 2)
    code = main(["eval", "--samples", str(tmp_path / "s.npz"), "--data", str(pets), "--image-size", "16",
                 "--classifier", str(tmp_path / "classifier.safetensors"), "--device", "cpu",
                 "--out", str(tmp_path / "r2.json")])
    assert code == 2
    assert "was trained on other classes (blue, green, red)" in capsys.readouterr().err


def test_an_interrupted_eval_keeps_the_scales_already_judged(model_file, tmp_path, monkeypatch, capsys):
    from ldmkit.pipeline import LatentDiffusionPipeline

    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    calls = []
    real_generate = LatentDiffusionPipeline.generate_uint8

    def interrupted_at_the_second_scale(self, *args, **kwargs):
        calls.append(kwargs["cfg"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(LatentDiffusionPipeline, "generate_uint8", interrupted_at_the_second_scale)
    report = tmp_path / "report.json"
    assert main(["eval", "--model", str(model_file), "--data", str(data), "--n", "3", "--steps", "1", "--k", "1",
                 "--cfg", "1", "3", *QUICK, "--quiet", "--out", str(report)]) == 130
    assert calls == [1.0, 3.0]  # the second scale was generated only after the first was judged
    assert [run["cfg"] for run in json.loads(report.read_text())["results"]] == [1.0]
    assert f"interrupted; {report} has the 1 judged before it" in capsys.readouterr().err


def test_an_out_that_is_a_folder_fails_before_any_work(model_file, tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    (tmp_path / "reports").mkdir()
    assert main(["eval", "--model", str(model_file), "--data", str(data), *QUICK,
                 "--out", str(tmp_path / "reports")]) == 2
    assert "is a folder; give the report's file name" in capsys.readouterr().err
    assert not (tmp_path / "classifier.safetensors").exists()  # where --train-classifier would have put it


def test_k_and_sampler_mistakes_stop_before_any_work(model_file, tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    base = ["eval", "--model", str(model_file), "--data", str(data), *QUICK, "--out", str(tmp_path / "r.json")]
    assert main([*base, "--n", "2", "--k", "3"]) == 2
    assert "precision/recall with --k 3 needs more than k images in each set" in capsys.readouterr().err
    assert main([*base, "--n", "6", "--sampler", "plms"]) == 2
    assert "unknown sampler 'plms'" in capsys.readouterr().err
    assert not (tmp_path / "classifier.safetensors").exists()


def test_samples_of_ldm_generate_are_judged_by_their_class_names(model_file, tmp_path, monkeypatch):
    """`ldm eval --samples` on `ldm generate`'s folder: the ids in the file names are the model's
    (red=0), the data's folders sort blue, green, red; the labels judged are the data's ids of the
    same names, from the folder's samples.json, or from --model where a folder has none."""
    import ldmkit.eval as eval_package

    seen = []
    real_evaluate = eval_package.evaluate

    def record(images, fake_labels, *args, **kwargs):
        seen.append(fake_labels.tolist())
        return real_evaluate(images, fake_labels, *args, **kwargs)

    monkeypatch.setattr(eval_package, "evaluate", record)
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    samples = tmp_path / "samples"
    assert main(["generate", "--model", str(model_file), "--n", "3", "--steps", "1", "--device", "cpu", "--quiet",
                 "--out", str(samples)]) == 0
    assert json.loads((samples / "samples.json").read_text())["class_names"] == MODEL_CLASSES
    judge = ["eval", "--samples", str(samples), "--data", str(data), "--image-size", "16", "--n", "3", "--k", "1",
             *QUICK, "--out", str(tmp_path / "r.json")]
    assert main(judge) == 0
    (samples / "samples.json").unlink()
    assert main([*judge, "--model", str(model_file)]) == 0
    assert seen == [[2, 1, 0], [2, 1, 0]]  # red, green, blue in the data's ids


def test_a_samples_file_that_is_not_an_npz_or_has_wrong_labels_is_one_line(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    judge = ["eval", "--data", str(data), "--features", "classifier", "--device", "cpu",
             "--out", str(tmp_path / "r.json")]
    for name, content in [("text.npz", b"not an archive"), ("cut.npz", b"PK\x03\x04cut"), ("empty.npz", b"")]:
        (tmp_path / name).write_bytes(content)
        assert main([*judge, "--samples", str(tmp_path / name), "--image-size", "16"]) == 2
        err = capsys.readouterr().err
        assert f"--samples {tmp_path / name} is not a readable .npz file" in err and "Traceback" not in err
    images = np.zeros((4, 3, 16, 16), np.uint8)
    np.savez(tmp_path / "labels.npz", images=images, labels=np.array([0, 1, 50, -1]))
    assert main([*judge, "--samples", str(tmp_path / "labels.npz")]) == 2  # the size read off the samples
    assert "class labels [-1, 50] are not ids of the data's 3 classes (0 to 2)" in capsys.readouterr().err
    np.savez(tmp_path / "four.npz", images=images, labels=np.array([0, 1, 2, 0]))
    assert main([*judge, "--samples", str(tmp_path / "four.npz"), "--k", "4"]) == 2
    assert "--k 4 needs more than k images in each set, and k >= 1: 4 samples," in capsys.readouterr().err
    np.savez(tmp_path / "other.npz", pixels=images)
    assert main([*judge, "--samples", str(tmp_path / "other.npz"), "--image-size", "16"]) == 2
    assert f"{tmp_path / 'other.npz'} has no 'images' array (found: pixels)" in capsys.readouterr().err


def test_the_vae_floor_compares_random_halves_not_the_classes_of_file_order():
    """A folder's test images come class by class: halves in file order held different classes, so
    the 'floor' of a perfect VAE read as the distance between classes."""
    import types

    import torch

    from ldmkit.cli.eval import _reconstruction_report

    images = torch.cat([torch.full((40, 3, 8, 8), 30, dtype=torch.uint8),  # class A, then class B
                        torch.full((40, 3, 8, 8), 220, dtype=torch.uint8)])
    images = (images.short() + torch.randint(-20, 20, images.shape, generator=torch.Generator().manual_seed(0)))
    images = images.clamp(0, 255).to(torch.uint8)
    lossless = types.SimpleNamespace(parameters=lambda: iter([torch.zeros(1)]), encode=lambda x: x, decode=lambda z: z)
    features = lambda x: x.float().mean(dim=(2, 3))  # noqa: E731 - [N, 3]: the colour, which tells the classes
    extractor = type("Extractor", (), {"name": "colour", "device": torch.device("cpu"),
                                       "__call__": lambda self, x: features(x)})()
    out = _reconstruction_report(lossless, images, extractor, "cpu", k=3, kid_subsets=2)
    apart = float((features(images[:40]).mean(0) - features(images[40:]).mean(0)).square().sum())  # ~3 * 190^2
    assert out["real_vs_real"]["FD_colour"] < 0.01 * apart
    assert out["reconstruction_vs_real"]["FD_colour"] < 0.01 * apart
    assert out["psnr"] > 40
