"""ldmkit: latent diffusion models on PyTorch.

The seed API (`LatentDiffusionModel` and its building blocks) and the main classes are
importable from here; `LatentDiffusionPipeline` is imported on first use, so `import ldmkit`
stays light.
"""

__version__ = "0.1.0"

from ldmkit.models import AutoencoderKL, AutoencoderKLConfig, LatentDiffusionModel, UNet, UNetConfig
from ldmkit.nn import DownSample, ResNetBlock, SelfAttentionBlock, UpSample

__all__ = [
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "DownSample",
    "LatentDiffusionModel",
    "LatentDiffusionPipeline",
    "ResNetBlock",
    "SelfAttentionBlock",
    "UNet",
    "UNetConfig",
    "UpSample",
    "__version__",
    "load_model",
]


def __getattr__(name: str):
    if name == "LatentDiffusionPipeline":
        from ldmkit.pipeline import LatentDiffusionPipeline

        return LatentDiffusionPipeline
    if name == "load_model":
        from ldmkit.interop import load_model

        return load_model
    raise AttributeError(f"module 'ldmkit' has no attribute {name!r}")
