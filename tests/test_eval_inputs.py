"""`ldm eval`'s inputs that once failed late or wrongly (a user-testing report): an .npy file named
.npz, KID settings checked only after the samples were made, a report folder that cannot be
written found only at the end, 16-bit PNG samples clipped to black and white, a truncated sample
not named."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from test_eval_cli import MODEL_CLASSES, QUICK, make_folder_data, model_file  # noqa: F401 (fixture)

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.eval import read_sample_folder


def test_an_npy_file_named_npz_is_one_line(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    np.save(tmp_path / "plain.npy", np.zeros((4, 3, 16, 16), np.uint8))
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    assert main(["eval", "--data", str(data), "--samples", str(tmp_path / "plain.npz"), "--image-size", "16",
                 "--features", "classifier", "--device", "cpu", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "holds one array, not the arrays of an .npz file" in err and "Traceback" not in err


@pytest.mark.parametrize("labels, said", [
    (np.array(["a", "b", "c", "d"]), "must be a 1-D array of integer class ids"),  # was a TypeError
    (np.array([0.5, 1.7, 0.0, 1.0]), "must be a 1-D array of integer class ids"),  # was cut to 0, 1, 0, 1
    (np.zeros((4, 1), np.int64), "must be a 1-D array of integer class ids"),
    (np.array(3), "must be a 1-D array of integer class ids"),  # 0-d: was an IndexError
    (np.array([0, 1, 2]), "holds 4 images and 3 labels"),
])
def test_npz_labels_that_are_not_one_class_id_per_image_are_one_line(tmp_path, labels, said):
    from ldmkit.eval.npz_samples import npz_arrays

    np.savez(tmp_path / "s.npz", images=np.zeros((4, 3, 8, 8), np.uint8), labels=labels)
    with pytest.raises(UserError, match=said):
        npz_arrays(str(tmp_path / "s.npz"), None)
    np.savez(tmp_path / "ok.npz", images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.array([0, 1, 2, 1], np.uint8))
    assert npz_arrays(str(tmp_path / "ok.npz"), 3)[1].tolist() == [0, 1, 2]


@pytest.mark.parametrize("flag, value, least", [("--kid-subsets", "0", 1), ("--kid-subset-size", "1", 2),
                                               ("--batch-size", "0", 1), ("--classifier-epochs", "0", 1)])
def test_kid_settings_are_checked_before_any_work(model_file, tmp_path, capsys, flag, value, least):  # noqa: F811
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    args = ["eval", "--model", str(model_file), "--data", str(data), *QUICK, flag, value, "--n", "6",
            "--out", str(tmp_path / "r.json")]
    assert main(args) == 2
    assert f"{flag} must be at least {least} (got {value})" in capsys.readouterr().err
    assert not (tmp_path / "classifier.safetensors").exists()  # refused before the classifier trained


def test_a_report_folder_that_cannot_be_written_is_refused_before_any_work(model_file, tmp_path, capsys):  # noqa: F811
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    assert main(["eval", "--model", str(model_file), "--data", str(data), *QUICK,
                 "--out", "/proc/report.json"]) == 2  # /proc takes no new files, even from root
    assert "cannot write the report into /proc" in capsys.readouterr().err
    assert not (tmp_path / "classifier.safetensors").exists()


def test_sixteen_bit_samples_are_scaled_not_clipped(tmp_path):
    levels = np.array([[0, 257 * 40], [257 * 128, 65535]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    for i in range(2):
        Image.fromarray(levels).save(tmp_path / f"{i:05d}.png")  # uint16: a 16-bit greyscale PNG
    with Image.open(tmp_path / "00000.png") as saved:
        assert saved.mode in ("I;16", "I")  # what PIL reads a 16-bit PNG as
    images = read_sample_folder(tmp_path).images
    assert images.shape == (2, 1, 8, 8)
    assert sorted(set(images[0, 0].flatten().tolist())) == [0, 40, 128, 255]  # clipped, it was {0, 255}


def test_a_truncated_sample_is_named(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for i in range(3):
        Image.fromarray(pixels).save(tmp_path / f"{i:05d}.png")
    cut = tmp_path / "00001.png"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(UserError, match=rf"sample {cut} cannot be read \(.*\); generate it again or remove it"):
        read_sample_folder(tmp_path)


def test_inception_weights_choose_inception_features_or_are_refused(model_file, tmp_path, capsys):  # noqa: F811
    """--inception-weights without --features inception was ignored: EfficientNet metrics, no word."""
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    args = ["eval", "--model", str(model_file), "--data", str(data), "--n", "6", "--device", "cpu",
            "--inception-weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "r.json")]
    assert main(args) == 2  # auto: Inception, whose weights are not there
    assert f"Inception weights not found at {tmp_path / 'nope.pth'}" in capsys.readouterr().err
    assert main([*args, "--features", "efficientnet"]) == 2
    assert "--inception-weights is for --features inception, not efficientnet" in capsys.readouterr().err


def test_the_report_and_classifier_replace_only_their_own_kind(model_file, tmp_path, capsys):  # noqa: F811
    """--out and --train-classifier's file wrote over anything: a run's model (which then could not
    generate), its checkpoint, a user's picture. Refused before any work; an earlier report or
    classifier is replaced as before."""
    from ldmkit.cli.eval_destinations import check_classifier_destination, report_path

    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(model_file.read_bytes())
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 a checkpoint")
    picture = tmp_path / "picture.png"
    Image.new("RGB", (4, 4)).save(picture)
    for flags, message in (
            (["--out", str(run / "model.safetensors")], "is a file of the run in"),
            (["--out", str(picture)], "exists and is not an earlier report"),
            (["--out", str(tmp_path / "r.json"), "--classifier", str(run / "checkpoint.pt")], "is a file of the run"),
            (["--out", str(tmp_path / "r.json"), "--classifier", str(picture)], "is not an earlier classifier")):
        assert main(["eval", "--model", str(model_file), "--data", str(data), *QUICK, *flags]) == 2
        assert message in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == model_file.read_bytes()
    assert (run / "checkpoint.pt").read_bytes() == b"PK\x03\x04 a checkpoint" and Image.open(picture).size == (4, 4)
    assert not (tmp_path / "r.json").exists()

    if hasattr(os, "mkfifo"):  # reading it to see whether it is a report waited for a writer for ever
        os.mkfifo(tmp_path / "pipe.json")
        with pytest.raises(UserError, match="exists and is not an earlier report"):
            report_path(str(tmp_path / "pipe.json"))

    (tmp_path / "old.json").write_text('{"results": [], "features": "classifier"}')
    assert report_path(str(tmp_path / "old.json")) == tmp_path / "old.json"  # an earlier report: replaced
    assert main(["eval", "--model", str(model_file), "--data", str(data), *QUICK, "--n", "6",
                 "--out", str(tmp_path / "r.json")]) == 0
    check_classifier_destination(tmp_path / "classifier.safetensors")  # the classifier it trained: replaced


def test_a_report_written_over_the_classifier_it_trains_is_refused(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    same = tmp_path / "both.safetensors"
    np.savez(tmp_path / "s.npz", images=np.zeros((8, 3, 16, 16), np.uint8))
    assert main(["eval", "--data", str(data), "--samples", str(tmp_path / "s.npz"), *QUICK, "--classifier", str(same),
                 "--out", str(same)]) == 2
    assert "--out and --classifier name the same file" in capsys.readouterr().err
    assert not same.exists()  # refused before the classifier trained


def test_several_guidance_scales_for_an_unconditional_model_are_refused_before_any_work(tmp_path, capsys):
    from tiny_models import save_tiny_class_model

    model = save_tiny_class_model(tmp_path / "uncond.safetensors", [])  # no classes: unconditional
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    assert main(["eval", "--model", str(model), "--data", str(data), *QUICK, "--cfg", "1", "2", "--n", "6",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "unconditional, so guidance changes nothing: --cfg 1 2 would judge the same samples 2 times" \
        in capsys.readouterr().err
    assert not (tmp_path / "classifier.safetensors").exists()


def test_samples_or_a_classifier_of_another_shape_are_refused_before_the_real_images_decode(tmp_path, capsys,
                                                                                             monkeypatch):
    from ldmkit.eval import real_data
    from ldmkit.eval.classifier import ClassifierConfig, ClassifierNet, save_classifier

    monkeypatch.setattr(real_data, "decode_real_images", lambda *a, **k: pytest.fail("the real images were decoded"))
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES)
    np.savez(tmp_path / "grey.npz", images=np.zeros((8, 1, 16, 16), np.uint8))  # the data is RGB
    assert main(["eval", "--data", str(data), "--samples", str(tmp_path / "grey.npz"), *QUICK,
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "images of (1, 16, 16) (C, H, W), the real images (3, 16, 16)" in capsys.readouterr().err
    config = ClassifierConfig(in_channels=3, num_classes=3, image_size=(32, 32), widths=(8,),
                              class_names=sorted(MODEL_CLASSES))  # the folder's order
    save_classifier(ClassifierNet(config), tmp_path / "big.safetensors")
    np.savez(tmp_path / "rgb.npz", images=np.zeros((8, 3, 16, 16), np.uint8))
    assert main(["eval", "--data", str(data), "--samples", str(tmp_path / "rgb.npz"), "--features", "classifier",
                 "--classifier", str(tmp_path / "big.safetensors"), "--device", "cpu", "--kid-subsets", "2",
                 "--kid-subset-size", "3", "--out", str(tmp_path / "r.json")]) == 2
    assert "the classifier was trained on images (3, 32, 32)" in capsys.readouterr().err


def test_a_baseline_of_fewer_training_images_than_samples_is_said(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", MODEL_CLASSES, per_class=(4, 4))  # 12 training images
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", images=rng.integers(0, 255, (16, 3, 16, 16), dtype=np.uint8))
    assert main(["eval", "--data", str(data), "--samples", str(tmp_path / "s.npz"), *QUICK, "--quiet",
                 "--out", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "warning: the real baseline compares all 12 training images, fewer than the 16 samples" in err, err
