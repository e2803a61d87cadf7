"""The eval report, reconstruction metrics and reading sample folders."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.errors import UserError
from ldmkit.eval.classifier import ClassifierConfig, ClassifierFeatures, ClassifierNet
from ldmkit.eval.extractor import FeatureExtractor
from ldmkit.eval.reconstruction import psnr, reconstruction_metrics, ssim
from ldmkit.eval.report import evaluate, format_report
from ldmkit.eval.samples_io import (
    SAMPLES_FILE,
    dataset_to_uint8,
    read_sample_classes,
    read_sample_folder,
    sample_filename,
    write_samples_info,
)


class PixelFeatures(FeatureExtractor):
    """Raw pixels as features: cheap, and identical images give identical features."""

    name = "pixels"

    def _features(self, batch):
        return batch.float().flatten(1)


def _images(n: int, seed: int, shape=(1, 6, 6)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_perfect_model_and_baseline_on_identical_sets():
    real = _images(60, 0)
    report = evaluate(real.clone(), None, real_train=real.flip(0), real_test=real,
                      extractor=PixelFeatures(device="cpu"), k=3, kid_subsets=5, kid_subset_size=30)
    m = report["metrics"]
    assert set(m) == {"FD_pixels", "KID_pixels", "precision", "recall"}
    # Fakes are the test set itself; the train subsample at n = 60 is a permutation of it.
    for side in ("model", "real"):
        assert m["FD_pixels"][side] == pytest.approx(0.0, abs=1e-6)
        assert m["precision"][side] == 1.0 and m["recall"][side] == 1.0
    assert m["FD_pixels"]["better"] == "lower" and m["recall"]["better"] == "higher"
    assert "model_std" in m["KID_pixels"] and "real_std" in m["KID_pixels"]
    assert report["counts"] == {"fake": 60, "real_train": 60, "real_test": 60}
    json.dumps(report)  # the CLI writes it as JSON


def test_evaluate_separates_a_bad_model_from_the_real_baseline():
    train, test = _images(80, 1), _images(50, 2)
    fake = (_images(40, 3) // 4)  # dark images: far from the real distribution
    report = evaluate(fake, None, train, test, PixelFeatures(device="cpu"), kid_subsets=5, kid_subset_size=30)
    m = report["metrics"]
    assert report["counts"]["real_train"] == 40  # train subsampled to the sample count
    assert m["FD_pixels"]["model"] > 5 * m["FD_pixels"]["real"]
    assert m["KID_pixels"]["model"] > m["KID_pixels"]["real"]
    assert m["precision"]["model"] < m["precision"]["real"]


def test_evaluate_class_accuracy_uses_the_classifier():
    net = ClassifierNet(ClassifierConfig(in_channels=1, num_classes=4, image_size=(6, 6), widths=(4, 8))).eval()
    classifier = ClassifierFeatures(net, device="cpu")
    fake, test = _images(30, 4), _images(30, 5)
    predicted = classifier.predict(fake)
    right = evaluate(fake, predicted, _images(30, 6), test, classifier, kid_subsets=2, kid_subset_size=10,
                     real_test_labels=classifier.predict(test))
    wrong = evaluate(fake, (predicted + 1) % 4, _images(30, 6), test, PixelFeatures(device="cpu"),
                     classifier=net, kid_subsets=2, kid_subset_size=10)
    assert right["metrics"]["class_accuracy"]["model"] == 1.0
    assert right["metrics"]["class_accuracy"]["real"] == 1.0
    assert "FD_classifier" in right["metrics"]
    assert wrong["metrics"]["class_accuracy"]["model"] == 0.0
    assert wrong["metrics"]["class_accuracy"]["real"] is None  # no test labels given
    table = format_report(wrong)
    assert "class_accuracy" in table and "0.0000" in table


def test_evaluate_judges_the_real_side_once_for_several_sample_sets():
    """`ldm eval --cfg 1.5 2 3`: the real features, the baseline and the classifier's accuracy on the
    real images are the same for every scale; with `reuse` they are computed once, and each report
    is the one a call of its own gives."""
    net = ClassifierNet(ClassifierConfig(in_channels=1, num_classes=4, image_size=(6, 6), widths=(4, 8))).eval()
    images_seen = []

    class Counted(ClassifierFeatures):
        def _features(self, batch):
            images_seen.append(batch.shape[0])
            return super()._features(batch)

    extractor = Counted(net, device="cpu")
    train, test = _images(40, 6), _images(30, 5)
    test_labels = extractor.predict(test)
    fakes = [(_images(30, 10 + i), torch.arange(30) % 4) for i in range(3)]
    options = dict(real_test_labels=test_labels, kid_subsets=3, kid_subset_size=10)
    alone = [evaluate(f, labels, train, test, extractor, classifier=net, **options) for f, labels in fakes]
    seen_alone, reuse = sum(images_seen), {}
    images_seen.clear()
    shared = [evaluate(f, labels, train, test, extractor, classifier=net, reuse=reuse, **options)
              for f, labels in fakes]
    assert shared == alone
    assert sum(images_seen) == 30 + 30 + 3 * 30  # test, the train subset once; each sample set once
    assert seen_alone == 3 * (30 + 30 + 30)  # each call: test, samples, train subset (predictions from features)
    assert alone[0]["metrics"]["class_accuracy"]["real"] == 1.0  # the head on the features = predict()
    predicted = extractor.predict(fakes[0][0])
    assert alone[0]["metrics"]["class_accuracy"]["model"] == float((predicted == fakes[0][1]).double().mean())


def test_only_inception_features_make_fid():
    class FakeInception(PixelFeatures):
        name = "inception"

    report = evaluate(_images(20, 7), None, _images(20, 8), _images(20, 9), FakeInception(device="cpu"),
                      kid_subsets=2, kid_subset_size=10)
    assert "FID" in report["metrics"] and "KID_inception" in report["metrics"]


def test_format_report_is_a_table_with_both_columns():
    report = evaluate(_images(20, 10), None, _images(20, 11), _images(20, 12), PixelFeatures(device="cpu"),
                      kid_subsets=3, kid_subset_size=10)
    table = format_report(report)
    lines = table.splitlines()
    assert lines[1].split(" | ")[0].strip() == "metric" and "real baseline" in lines[1]
    for name in ("FD_pixels", "KID_pixels", "precision", "recall"):
        assert any(line.startswith(name) for line in lines)
    assert "±" in table


def test_evaluate_rejects_mismatched_shapes():
    with pytest.raises(UserError, match="share one shape"):
        evaluate(_images(10, 0, (1, 8, 8)), None, _images(10, 1), _images(10, 2), PixelFeatures(device="cpu"))
    with pytest.raises(UserError, match="uint8"):
        evaluate(_images(10, 0).float(), None, _images(10, 1), _images(10, 2), PixelFeatures(device="cpu"))


# --------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_closed_form():
    a = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    b = torch.full_like(a, 16)  # MSE = (16/255)^2 in [0, 1] units
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 16))
    assert reconstruction_metrics(a, a)["psnr"] == 100.0  # identical: capped, finite
    diverged = torch.zeros(2, 3, 8, 8)
    diverged[0, 0, 0, 0] = float("nan")  # a VAE whose training diverged: not a perfect score
    assert math.isnan(reconstruction_metrics(torch.zeros(2, 3, 8, 8), diverged)["psnr"])


def test_ssim_of_constant_images_is_the_luminance_term():
    # Constant images have zero variance and covariance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a_val, b_val = 0.2, 0.6
    a = torch.full((1, 3, 16, 16), a_val * 2 - 1, dtype=torch.float64)  # float images are [-1, 1]
    b = torch.full((1, 3, 16, 16), b_val * 2 - 1, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * a_val * b_val + c1) / (a_val**2 + b_val**2 + c1)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def _ssim_reference(x: np.ndarray, y: np.ndarray, size=11, sigma=1.5) -> float:
    """Window-by-window SSIM of one grayscale pair in [0, 1], straight from Wang et al. 2004."""
    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            px, py = x[i : i + size, j : j + size], y[i : i + size, j : j + size]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_window_by_window_reference():
    x = _images(1, 20, (1, 16, 14))
    noise = torch.randint(-120, 120, x.shape, generator=torch.Generator().manual_seed(0))
    y = (x.int() + noise).clamp(0, 255).to(torch.uint8)
    expected = _ssim_reference(x[0, 0].double().numpy() / 255, y[0, 0].double().numpy() / 255)
    assert ssim(x, y) == pytest.approx(expected, rel=1e-9)
    assert 0.1 < expected < 0.95  # a real difference, not a trivial 1.0


def test_ssim_small_images_and_shape_errors():
    x = _images(2, 21, (3, 5, 5))
    assert ssim(x, x) == pytest.approx(1.0)  # window shrinks to 5x5
    with pytest.raises(UserError):
        reconstruction_metrics(x, _images(2, 22, (3, 6, 6)))
    with pytest.raises(UserError):
        reconstruction_metrics(x, x.float())


# --------------------------------------------------------------------------- sample folders


def _write(folder, name, array):
    Image.fromarray(array).save(folder / name)


def test_read_sample_folder_round_trip(tmp_path):
    images = _images(3, 30, (1, 8, 8))
    for i, img in enumerate(images):
        _write(tmp_path, sample_filename(i, seed=100 + i, class_id=i % 2), img[0].numpy())
    (tmp_path / "notes.txt").write_text("ignored")
    samples = read_sample_folder(tmp_path)
    assert sample_filename(12, 12, 3) == "00012_seed12_class3.png"
    assert torch.equal(samples.images, images)
    assert samples.labels.tolist() == [0, 1, 0]
    assert samples.seeds == [100, 101, 102]
    assert read_sample_folder(tmp_path, channels=3).images.shape == (3, 3, 8, 8)


def test_read_sample_folder_class_names_and_order(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    _write(tmp_path, "100000_seed5_class-T-shirt_top.png", rgb)
    _write(tmp_path, "99999_class-Sneaker.png", rgb + 1)
    samples = read_sample_folder(tmp_path, class_names=["T-shirt/top", "Trouser", "Sneaker"])
    assert samples.images.shape == (2, 3, 4, 4)
    assert samples.labels.tolist() == [2, 0]  # 99999 sorts before 100000
    assert samples.seeds == [None, 5]
    with pytest.raises(UserError, match="unknown class"):
        read_sample_folder(tmp_path, class_names=["Bag"])
    with pytest.raises(UserError, match="no class names"):
        read_sample_folder(tmp_path)


def test_read_sample_folder_reads_ids_by_the_names_of_the_samples_model(tmp_path):
    """A `_class{id}` tag is the id of the model that made the sample: with that model's class
    names (its `samples.json`, or given) the label is the data's id of the same name."""
    gray = np.zeros((4, 4), dtype=np.uint8)
    for i, class_id in enumerate([0, 1, 2, 0]):
        _write(tmp_path, sample_filename(i, seed=i, class_id=class_id), gray + i)
    data_classes = ["blue", "green", "red"]
    assert read_sample_folder(tmp_path, class_names=data_classes).labels.tolist() == [0, 1, 2, 0]  # nothing known
    given = read_sample_folder(tmp_path, class_names=data_classes, sample_class_names=["red", "green", "blue"])
    assert given.labels.tolist() == [2, 1, 0, 2]
    write_samples_info(tmp_path, ["green", "Red", "blue"], {})  # the folder's own names win over the given ones
    assert read_sample_classes(tmp_path) == ["green", "Red", "blue"]
    own = read_sample_folder(tmp_path, class_names=data_classes, sample_class_names=["red", "green", "blue"])
    assert own.labels.tolist() == [1, 2, 0, 1]
    assert read_sample_folder(tmp_path).labels.tolist() == [0, 1, 2, 0]  # no data names: the ids as they are

    write_samples_info(tmp_path, ["green", "red"], {})
    with pytest.raises(UserError, match="class id 2, but the samples' model has 2 classes"):
        read_sample_folder(tmp_path, class_names=data_classes)
    write_samples_info(tmp_path, ["green", "red", "cyan"], {})
    with pytest.raises(UserError, match="unknown class 'cyan'; the data's classes: blue, green, red"):
        read_sample_folder(tmp_path, class_names=data_classes)
    (tmp_path / SAMPLES_FILE).write_text('{"class_names": [1, 2]}')
    with pytest.raises(UserError, match="must be a list of strings"):
        read_sample_folder(tmp_path, class_names=data_classes)
    (tmp_path / SAMPLES_FILE).write_text("{not json")
    with pytest.raises(UserError, match="is not ldmkit.s description of the samples"):
        read_sample_folder(tmp_path, class_names=data_classes)


def test_read_sample_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_sample_folder(tmp_path / "missing")
    with pytest.raises(UserError, match="no .png"):
        read_sample_folder(tmp_path)
    _write(tmp_path, "00000_class1.png", np.zeros((4, 4), dtype=np.uint8))
    _write(tmp_path, "00001.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(UserError, match="_class tag"):
        read_sample_folder(tmp_path)
    _write(tmp_path, "00001.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(UserError, match="differ in size"):
        read_sample_folder(tmp_path)


def test_dataset_to_uint8_quantises_like_png():
    items = [(torch.tensor([[[-1.0, 0.0, 1.0]]]), 7), (torch.tensor([[[0.5, -0.5, 0.999]]]), 2)]
    images, labels = dataset_to_uint8(items)
    assert images.dtype == torch.uint8
    assert images[0].flatten().tolist() == [0, 128, 255]  # 127.5 rounds to even: 128
    assert labels.tolist() == [7, 2]
    assert dataset_to_uint8(items, limit=1)[0].shape[0] == 1


def test_dataset_to_uint8_takes_stored_images_of_an_image_dataset():
    from ldmkit.data.dataset import InMemoryImageDataset

    stored, labels = _images(5, 40, (1, 4, 4)), torch.arange(5)
    dataset = InMemoryImageDataset(stored, labels, source="test", split="val", class_names=list("abcde"),
                                   channels=1, image_size=4, flip=True)  # flips must not leak in
    images, got_labels = dataset_to_uint8(dataset)
    assert torch.equal(images, stored) and torch.equal(got_labels, labels)
    first, first_labels = dataset_to_uint8(dataset, limit=2)
    assert torch.equal(first, stored[:2]) and first_labels.tolist() == [0, 1]


@pytest.mark.parametrize("change", [{"dropout": 5.0}, {"widths": [8.5, 16]}, {"convs_per_stage": "two"}])
def test_a_classifier_file_whose_config_no_layer_takes_is_one_line(tmp_path, change):
    """`dropout: 5.0` in a hand-edited file was a ValueError traceback from inside the model's build."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ldmkit.eval.classifier import load_classifier, save_classifier

    config = ClassifierConfig(in_channels=3, num_classes=2, image_size=(8, 8), widths=(8, 16), class_names=["a", "b"])
    save_classifier(ClassifierNet(config), tmp_path / "c.safetensors")
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    metadata["config"] = json.dumps({**json.loads(metadata["config"]), **change})
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(UserError, match="the classifier file .*bad.safetensors cannot be read"):
        load_classifier(tmp_path / "bad.safetensors")
