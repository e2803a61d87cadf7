"""The `ldm train` engine: VAE stage, latent cache, diffusion stage, checkpoints, torchrun.

Entry point: `run_training(config, out_dir, *, resume=None)` with a `RunConfig` built from a
preset (`preset_config("tiny")`) and overridden with `apply_overrides(config, flags)`.
Artifacts: `load_inference_file(path_or_run_dir)` rebuilds (unet, vae, meta) from
RUN/model.safetensors; `load_training_state` reads RUN/checkpoint.pt without unpickling code.
"""
from ldmkit.train.checkpoint import load_training_state, save_training_state
from ldmkit.train.config import (
    TRAIN_PRESETS,
    DiffusionTrainConfig,
    RunConfig,
    VAETrainConfig,
    apply_overrides,
    preset_config,
    validate,
)
from ldmkit.train.ema import EMA
from ldmkit.train.inference_file import (
    MODEL_FILE,
    load_inference_file,
    read_inference_metadata,
    save_inference_file,
)
from ldmkit.train.run import load_run_config, run_training

__all__ = [
    "EMA",
    "MODEL_FILE",
    "TRAIN_PRESETS",
    "DiffusionTrainConfig",
    "RunConfig",
    "VAETrainConfig",
    "apply_overrides",
    "load_inference_file",
    "load_run_config",
    "load_training_state",
    "preset_config",
    "read_inference_metadata",
    "run_training",
    "save_inference_file",
    "save_training_state",
    "validate",
]
