"""Inception-v3 pool3 features for FID, from locally present weights only (never downloads).

FID (Heusel et al. 2017) is defined with the TensorFlow Inception-v3 graph of
2015-12-05 (Szegedy et al. 2016, "Rethinking the Inception Architecture"). Its PyTorch
ports (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`) store that graph's weights under the
layer names used below. The network is written here from the paper's module diagrams,
with the graph's differences from torchvision's Inception3: average pools that exclude
padding from the count, a max pool in the last block's pool branch, and 1008 classes.

Preprocessing follows the TF graph: bilinear resize to 299 px with TF1's corner-aligned
pixel mapping (no half-pixel offset), then (x - 128) / 128.
Only metrics in these features may be called "FID".
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.errors import UserError
from ldmkit.eval.extractor import FeatureExtractor, to_rgb

__all__ = ["FIDInceptionV3", "InceptionFeatures", "find_inception_weights"]

_WEIGHT_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299


def find_inception_weights(path: str | Path | None = None) -> Path:
    """Locate the FID Inception weights: `path`, else the torch hub checkpoint cache."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights not found at {path}")
        return path
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    for name in _WEIGHT_FILES:
        if (hub / name).is_file():
            return hub / name
    raise UserError(
        "FID needs the Inception-v3 weights of 2015-12-05, which ldmkit never downloads. Put "
        f"{_WEIGHT_FILES[0]} (torch-fidelity) or {_WEIGHT_FILES[1]} (pytorch-fid) in {hub}, "
        "or pass its path; or use another feature extractor (classifier, efficientnet)"
    )


class _ConvBN(nn.Module):
    """Conv (no bias) + batch norm (eps 1e-3, as in the TF graph) + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel, stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # The TF graph averages only real pixels at the border (count_include_pad=False).
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 module: 1x1, 5x5, double 3x3 and pool branches (paper fig. 5)."""

    def __init__(self, in_ch: int, pool_ch: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(in_ch, 64, 1)
        self.branch5x5_1 = _ConvBN(in_ch, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_ch, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_ch, pool_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class _ReductionB(nn.Module):
    """35 -> 17 grid reduction (paper fig. 10)."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_ch, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    """17x17 module with factorised 1x7 / 7x1 convolutions (paper fig. 6)."""

    def __init__(self, in_ch: int, mid: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(in_ch, 192, 1)
        self.branch7x7_1 = _ConvBN(in_ch, mid, 1)
        self.branch7x7_2 = _ConvBN(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(mid, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_ch, mid, 1)
        self.branch7x7dbl_2 = _ConvBN(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(mid, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class _ReductionD(nn.Module):
    """17 -> 8 grid reduction."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_ch, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_ch, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    """8x8 module with expanded 1x3 / 3x1 branches (paper fig. 7)."""

    def __init__(self, in_ch: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool  # the graph's last block pools with max, not average
        self.branch1x1 = _ConvBN(in_ch, 320, 1)
        self.branch3x3_1 = _ConvBN(in_ch, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_ch, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3; `features()` is the 2048-d pool3 layer."""

    feature_dim = 2048

    def __init__(self, num_classes: int = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """pool3 features `[B, 2048]` of inputs `[B, 3, 299, 299]` scaled to about [-1, 1]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 64, 147, 147]
        x = F.max_pool2d(x, 3, stride=2)  # [B, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B, 192, 71, 71]
        x = F.max_pool2d(x, 3, stride=2)  # [B, 192, 35, 35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [B, 288, 35, 35]
        x = self.Mixed_6a(x)  # [B, 768, 17, 17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # [B, 768, 17, 17]
        x = self.Mixed_7a(x)  # [B, 1280, 8, 8]
        x = self.Mixed_7c(self.Mixed_7b(x))  # [B, 2048, 8, 8]
        return x.mean(dim=(2, 3))  # [B, 2048]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resize_like_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with TF1 `resize_bilinear(align_corners=False)` sampling.

    TF1 maps output pixel i to source coordinate i * in / out (no half-pixel centre),
    clamping the right neighbour at the border; torch's interpolate uses half-pixel
    centres, which would shift FID slightly away from the reference values.
    """

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, device=x.device, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    y0, y1, wy = axis(x.shape[-2])
    x0, x1, wx = axis(x.shape[-1])
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]  # [B, C, size, W]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx  # [B, C, size, size]


def load_fid_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """The FID Inception-v3 with weights from `path` or the torch hub cache (eval mode)."""
    weights = find_inception_weights(path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which file, not a pickle trace
        # torch's own words can be a bare number (a pickle's magic) or pages of "weights_only" advice
        raise UserError(f"cannot read Inception weights {weights}: not a PyTorch weights file torch.load reads "
                        f"with weights_only=True ({type(exc).__name__}); get pt_inception-2015-12-05-6726825d.pth "
                        "again") from None
    model = FIDInceptionV3()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if "AuxLogits" not in k]
    if missing or unexpected:
        raise UserError(
            f"{weights} is not the FID Inception-v3 of 2015-12-05 "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval()


class InceptionFeatures(FeatureExtractor):
    """Inception-v3 pool3 features (2048-d): the only extractor whose FD is called FID."""

    name = "inception"
    dim = FIDInceptionV3.feature_dim

    def __init__(
        self, weights: str | Path | None = None, device: torch.device | str | None = None, batch_size: int = 100
    ) -> None:
        super().__init__(device, batch_size)
        self.model = load_fid_inception(weights, self.device)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        x = resize_like_tf1(to_rgb(batch.float()), INPUT_SIZE)  # [B, 3, 299, 299] in [0, 255]
        return self.model.features((x - 128.0) / 128.0)
