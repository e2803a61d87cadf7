"""Training of the evaluation classifier (`ClassifierNet`) on the dataset being modelled.

The whole dataset is moved to the device once and augmented there in batches: for
28 px data the network is so small that a per-item DataLoader would be the bottleneck.
Recipe: random flips and random translations (pad + crop), AdamW, one-cycle learning
rate (Smith & Topin 2017), label smoothing (Szegedy et al. 2016), bf16 autocast on GPU.
On real Fashion-MNIST (H100) it reaches 0.936 test accuracy in 10 epochs (15 s) and
0.949 with the default 30 epochs (35 s).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ldmkit.errors import UserError
from ldmkit.eval.classifier import ClassifierConfig, ClassifierNet, uint8_to_unit
from ldmkit.eval.extractor import resolve_device

__all__ = ["train_classifier", "labelled_tensors", "classifier_accuracy"]


def labelled_tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 `[N, C, H, W]` in [-1, 1] and labels int64 `[N]` from a dataset.

    Accepts a `(images, labels)` pair of tensors (images uint8 in [0, 255] or float in
    [-1, 1]), an `ldmkit.data.ImageDataset` (its stored uint8 images, unflipped), or any
    map-style dataset whose items are `(image [C, H, W] in [-1, 1], label)`.
    """
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and isinstance(dataset[0], torch.Tensor):
        images, labels = dataset
        labels = torch.as_tensor(labels, dtype=torch.int64)
    elif hasattr(dataset, "as_uint8_tensor"):  # ldmkit.data.ImageDataset: stored, unflipped
        images, labels = dataset.as_uint8_tensor(), dataset.as_label_tensor()
    else:
        if len(dataset) == 0:
            raise UserError("the classifier's dataset is empty")
        loader = torch.utils.data.DataLoader(dataset, batch_size=1024, shuffle=False, num_workers=0)
        parts = [(x, torch.as_tensor(y, dtype=torch.int64)) for x, y in loader]
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
    if images.dtype == torch.uint8:
        images = uint8_to_unit(images)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise UserError("expected images [N, C, H, W] and labels [N], "
                        f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    if (labels < 0).any():
        raise UserError("the dataset has no class labels; a classifier needs a labelled (class-conditional) dataset")
    return images.float(), labels


def _random_translate(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (replicate-pad, then a random crop)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # replicate: no fake border colour
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [N, H]
    cols = ox[:, None] + torch.arange(w, device=x.device)  # [N, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: [N, H, W, C].
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    if pad > 0:
        x = _random_translate(x, pad, generator)
    if flip:
        mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def classifier_accuracy(
    model: ClassifierNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of `model` on float images in [-1, 1] (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = model(x).argmax(dim=1)
        correct += int((pred.cpu() == labels[start : start + batch_size].cpu()).sum())
    return correct / images.shape[0]


def train_classifier(
    dataset_train: Any,
    dataset_val: Any,
    *,
    epochs: int = 30,
    device: torch.device | str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    widths: Sequence[int] = (64, 128, 256),
    flip: bool = True,
    translate: int | None = None,
    class_names: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[ClassifierNet, float]:
    """Train a `ClassifierNet` on `dataset_train`; return `(model in eval mode, val accuracy)`.

    Datasets are `(images, labels)` tensor pairs or datasets of `(image, label)` items (see
    `labelled_tensors`). `translate` is the maximum random shift in pixels (default: 1/14
    of the image side, 2 px at 28 px). `log` receives one line per epoch. Training is
    deterministic for a given seed and device, and leaves the global RNG untouched.
    """
    if epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    device = resolve_device(device)
    x_train, y_train = labelled_tensors(dataset_train)
    x_val, y_val = labelled_tensors(dataset_val)
    if x_val.shape[1:] != x_train.shape[1:]:
        raise UserError(f"train and val images differ in shape: {tuple(x_train.shape[1:])} vs {tuple(x_val.shape[1:])}")
    if class_names is None:
        class_names = list(getattr(dataset_train, "class_names", []) or [])
    num_classes = max(int(y_train.max()) + 1, len(class_names))
    _, channels, height, width = x_train.shape
    config = ClassifierConfig(
        in_channels=channels, num_classes=num_classes, image_size=(height, width),
        widths=tuple(widths), class_names=list(class_names),
    )
    pad = translate if translate is not None else max(1, round(min(height, width) / 14))

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # seed dropout/init without touching the caller's RNG
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = ClassifierNet(config).to(device, memory_format=torch.channels_last)
        x_train, y_train = x_train.to(device), y_train.to(device)
        steps_per_epoch = math.ceil(x_train.shape[0] / batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25
        )
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(x_train.shape[0], generator=generator).to(device)
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                x = _augment(x_train[idx], pad, flip, generator)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y_train[idx], label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            if log is not None:
                acc = classifier_accuracy(model, x_val, y_val)
                log(f"classifier epoch {epoch + 1}/{epochs}: val accuracy {acc:.4f}")
    model.eval()
    return model, classifier_accuracy(model, x_val, y_val)
