"""The `ldm eval` report: every metric for the model beside the same metric for real data.

A number like "FD 4.2" means little alone: it depends on the feature space, the sample
count and the data. So each metric is computed twice at the same n, once for the model's
samples against the real test set and once for real training images (subsampled to n)
against the same test set. The second is the floor a perfect generator would reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldmkit.errors import UserError
from ldmkit.eval.classifier import ClassifierFeatures, ClassifierNet
from ldmkit.eval.extractor import FeatureExtractor, check_uint8_images
from ldmkit.eval.metrics import frechet_distance, kid, precision_recall

__all__ = ["evaluate", "distribution_metrics", "format_report", "fd_name"]


def fd_name(extractor_name: str) -> str:
    """Only the Inception-v3 Frechet distance is FID; any other is FD_<extractor>."""
    return "FID" if extractor_name == "inception" else f"FD_{extractor_name}"


def distribution_metrics(
    feats_model: torch.Tensor,
    feats_real: torch.Tensor,
    *,
    extractor_name: str,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """FD, KID (mean, std), precision and recall of one feature set against the real one."""
    kid_mean, kid_std = kid(feats_model, feats_real, kid_subsets, kid_subset_size, seed=seed, device=device)
    precision, recall = precision_recall(feats_real, feats_model, k, device=device)
    return {
        fd_name(extractor_name): frechet_distance(feats_model, feats_real),
        f"KID_{extractor_name}": kid_mean,
        f"KID_{extractor_name}_std": kid_std,
        "precision": precision,
        "recall": recall,
    }


def _class_accuracy(classifier: ClassifierFeatures, images: torch.Tensor, labels: torch.Tensor,
                    features: torch.Tensor | None = None) -> float:
    """The fraction of `images` `classifier` assigns to `labels`; from `features` (the classifier's
    own, already computed for these images) when given."""
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise UserError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    predicted = classifier.predict(images) if features is None else classifier.predict_from_features(features)
    return float((predicted == labels).double().mean())


def evaluate(
    fake_images: torch.Tensor,
    fake_labels: torch.Tensor | None,
    real_train: torch.Tensor,
    real_test: torch.Tensor,
    extractor: FeatureExtractor,
    classifier: ClassifierFeatures | ClassifierNet | None = None,
    k: int = 3,
    *,
    real_test_labels: torch.Tensor | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    reuse: dict | None = None,
) -> dict:
    """Compare generated images with real ones; returns a JSON-serialisable report.

    Images are uint8 `[N, C, H, W]` of one shape. The model's N samples are compared with
    `real_test`; the baseline compares N images drawn (seeded) from `real_train` with
    `real_test`. Class accuracy is the fraction of samples the classifier assigns to the
    class they were generated for (needs `fake_labels` and a classifier; the extractor is
    used when it is one); its baseline is the classifier's accuracy on `real_test` (needs
    `real_test_labels`), since training images are ones the classifier has memorised.

    Returns {"extractor", "counts", "k", "metrics": {name: {"model", "real"}}}; KID rows
    also carry "model_std" and "real_std"; every row says whether "lower" or "higher" is better.

    `reuse`: a dict shared by calls that judge several sample sets (one per guidance scale) against
    the same real images, extractor and classifier; what depends on those alone (the real
    features, the real baseline, the classifier's accuracy on real_test) is computed once in it.
    """
    reuse = {} if reuse is None else reuse

    def once(key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in reuse:
            reuse[key] = compute()
        return reuse[key]

    for name, images in (("fake_images", fake_images), ("real_train", real_train), ("real_test", real_test)):
        check_uint8_images(images, name)
    shapes = {tuple(x.shape[1:]) for x in (fake_images, real_train, real_test)}
    if len(shapes) > 1:
        raise UserError(f"generated and real images must share one shape [C, H, W], got {sorted(shapes)}")

    n = fake_images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    train_idx = torch.randperm(real_train.shape[0], generator=generator)[:n]
    train_subset = real_train[train_idx]

    feats_test = once(("features", "real_test"), lambda: extractor(real_test))
    options = dict(extractor_name=extractor.name, k=k, kid_subsets=kid_subsets,
                   kid_subset_size=kid_subset_size, seed=seed, device=extractor.device)
    feats_fake = extractor(fake_images)
    model_values = distribution_metrics(feats_fake, feats_test, **options)
    real_values = once(("baseline", n, k, kid_subsets, kid_subset_size, seed),
                       lambda: distribution_metrics(extractor(train_subset), feats_test, **options))

    metrics: dict[str, dict] = {}
    for name in model_values:
        if name.endswith("_std"):
            continue
        better = "higher" if name in ("precision", "recall") else "lower"
        row = {"model": model_values[name], "real": real_values[name], "better": better}
        if f"{name}_std" in model_values:
            row["model_std"] = model_values[f"{name}_std"]
            row["real_std"] = real_values[f"{name}_std"]
        metrics[name] = row

    if classifier is None and isinstance(extractor, ClassifierFeatures):
        classifier = extractor
    if isinstance(classifier, ClassifierNet):
        classifier = ClassifierFeatures(classifier, device=extractor.device, batch_size=extractor.batch_size)
    if classifier is not None and fake_labels is not None:
        # the extractor is this classifier: its features of these images are at hand, its head alone decides
        own = isinstance(extractor, ClassifierFeatures) and extractor.model is classifier.model
        row = {"model": _class_accuracy(classifier, fake_images, fake_labels, feats_fake if own else None),
               "real": None, "better": "higher"}
        if real_test_labels is not None:
            row["real"] = once(("accuracy", "real_test"), lambda: _class_accuracy(
                classifier, real_test, real_test_labels, feats_test if own else None))
        metrics["class_accuracy"] = row

    return {
        "extractor": extractor.name,
        "counts": {"fake": n, "real_train": int(train_subset.shape[0]), "real_test": int(real_test.shape[0])},
        "k": k,
        "metrics": metrics,
    }


def _format_value(name: str, value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    if std is not None:
        return f"{value:.5f} ± {std:.5f}"
    if name in ("precision", "recall", "class_accuracy"):
        return f"{value:.4f}"
    return f"{value:.2f}" if abs(value) >= 100 else f"{value:.4f}"


def format_report(report: dict) -> str:
    """A readable table: metric | better | model | real baseline, with a header line."""
    counts = report["counts"]
    lines = [
        f"features: {report['extractor']}; {counts['fake']} samples and {counts['real_train']} real "
        f"training images, each against {counts['real_test']} real test images; k = {report['k']}"
    ]
    rows = [("metric", "better", "model", "real baseline")]
    for name, row in report["metrics"].items():
        rows.append((
            name,
            row["better"],
            _format_value(name, row["model"], row.get("model_std")),
            _format_value(name, row["real"], row.get("real_std")),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, r in enumerate(rows):
        lines.append(" | ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)
