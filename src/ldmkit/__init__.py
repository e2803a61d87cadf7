"""ldmkit: latent diffusion models on PyTorch.

The seed API (`LatentDiffusionModel` and its building blocks) and the main classes are
importable from here, each imported on first use.
"""

__version__ = "0.1.0"

# name -> the module that defines it, imported on first use: `import ldmkit` stays light, and
# the `ldm` command (ldmkit._entry) can catch a Ctrl-C while torch is still importing.
_EXPORTS = {
    "AutoencoderKL": "ldmkit.models",
    "AutoencoderKLConfig": "ldmkit.models",
    "LatentDiffusionModel": "ldmkit.models",
    "UNet": "ldmkit.models",
    "UNetConfig": "ldmkit.models",
    "DownSample": "ldmkit.nn",
    "ResNetBlock": "ldmkit.nn",
    "SelfAttentionBlock": "ldmkit.nn",
    "UpSample": "ldmkit.nn",
    "LatentDiffusionPipeline": "ldmkit.pipeline",
    "load_model": "ldmkit.interop",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'ldmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
