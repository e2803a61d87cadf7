"""A small CNN classifier trained on the dataset itself, and the features it gives.

ImageNet networks see Fashion-MNIST-like data (28 px, grayscale) far from what they were
trained on, so their distances say little. A classifier trained on the same data sees
what matters there: its penultimate layer is the feature space for the Frechet distance
(reported as FD_classifier, never "FID"), and its predictions give the class accuracy of
class-conditional samples.

The network is VGG-style (Simonyan & Zisserman 2015) with batch norm: stages of 3x3
conv-BN-ReLU, 2x2 max-pooling between stages, global average pooling, one linear layer.
It works for any channel count and image size. Saved as safetensors with its config in
the metadata, so loading never unpickles code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ldmkit.atomic import atomic_save_safetensors
from ldmkit.errors import UserError, reading
from ldmkit.eval.extractor import FeatureExtractor, check_uint8_images
from ldmkit.json_text import loads
from ldmkit.models.fitted import build_fitted

__all__ = [
    "ClassifierConfig",
    "ClassifierNet",
    "ClassifierFeatures",
    "save_classifier",
    "load_classifier",
    "uint8_to_unit",
]

_FORMAT = "ldmkit-eval-classifier"


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], ldmkit's image convention (same as training data)."""
    return images.float().div_(127.5).sub_(1.0)


@dataclass
class ClassifierConfig:
    """Shape of the classifier; stored in the weights file so the file alone rebuilds it."""

    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    widths: tuple[int, ...] = (64, 128, 256)
    convs_per_stage: int = 2
    dropout: float = 0.2
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClassifierConfig":
        data = dict(data)
        data["image_size"] = tuple(data["image_size"])
        data["widths"] = tuple(data["widths"])
        if len(data["widths"]) > 16 or data.get("convs_per_stage", 2) > 64:  # a few bytes asking for a million layers
            raise ValueError(f"{len(data['widths'])} stages of {data.get('convs_per_stage')} convolutions")
        return cls(**data)


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    # bias=False: the following BatchNorm has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


class ClassifierNet(nn.Module):
    """VGG-style CNN with batch norm; `features()` is the penultimate (pooled) layer."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch = config.in_channels
        for stage, width in enumerate(config.widths):
            if stage > 0:
                # ceil_mode keeps odd sizes (e.g. 7 -> 4) from dropping a border row.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for _ in range(config.convs_per_stage):
                layers.append(_conv_bn_relu(in_ch, width))
                in_ch = width
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(in_ch, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features `[B, widths[-1]]` of images `[B, C, H, W]` in [-1, 1]."""
        h = self.trunk(x)  # [B, W, H', W']
        return h.mean(dim=(2, 3))  # global average pool -> [B, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits `[B, num_classes]` of images `[B, C, H, W]` in [-1, 1]."""
        return self.head(self.dropout(self.features(x)))


def save_classifier(model: ClassifierNet, path: str | Path, *, val_accuracy: float | None = None) -> None:
    """Write weights as safetensors; config (and validation accuracy) go in the metadata."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": _FORMAT, "config": json.dumps(model.config.to_dict())}
    if val_accuracy is not None:
        metadata["val_accuracy"] = repr(float(val_accuracy))
    atomic_save_safetensors(path, state, metadata)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> ClassifierNet:
    """Rebuild a classifier from a file written by `save_classifier` (in eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classifier file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a safetensors file: {exc}") from None
    if metadata.get("format") != _FORMAT:
        raise UserError(f"{path} is not an ldmkit evaluation classifier (train one with train_classifier)")
    # Its config is JSON anyone can write: a value no layer takes (a dropout of 5, a fractional
    # width) fails while the model is built, so the build is read under the same guard.
    with reading(f"the classifier file {path}"):
        config = ClassifierConfig.from_dict(loads(metadata.get("config", "null")))
        model = build_fitted(lambda: ClassifierNet(config), state, source=f"{path}: the weights")
    return model.to(device).eval()


class ClassifierFeatures(FeatureExtractor):
    """Penultimate-layer features and class predictions of a dataset-trained classifier."""

    name = "classifier"

    def __init__(
        self,
        model: ClassifierNet | str | Path,
        device: torch.device | str | None = None,
        batch_size: int = 500,
    ) -> None:
        super().__init__(device, batch_size)
        if not isinstance(model, ClassifierNet):
            model = load_classifier(model, self.device)
        self.model = model.to(self.device).eval()
        self.dim = model.feature_dim

    def _check_shape(self, images: torch.Tensor) -> None:
        cfg = self.model.config
        expected = (cfg.in_channels, *cfg.image_size)
        if tuple(images.shape[1:]) != expected:
            raise UserError(
                f"the classifier was trained on images {expected} (C, H, W), got {tuple(images.shape[1:])}; "
                "train a classifier on this dataset"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_uint8_images(images)
        self._check_shape(images)
        return super().__call__(images)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.features(uint8_to_unit(batch))

    @torch.inference_mode()
    def predict_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted class ids `[N]` (int64, CPU) from this classifier's own features `[N, D]` (what
        calling it returned): its head alone, so images already judged are not run through it again."""
        head = self.model.head
        out = []
        for start in range(0, features.shape[0], self.batch_size):
            batch = features[start : start + self.batch_size].to(self.device, head.weight.dtype)
            out.append(head(batch).argmax(dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class ids `[N]` (int64, CPU) of uint8 images `[N, C, H, W]`."""
        check_uint8_images(images)
        self._check_shape(images)
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            out.append(self.model(uint8_to_unit(batch)).argmax(dim=1).cpu())
        return torch.cat(out)
