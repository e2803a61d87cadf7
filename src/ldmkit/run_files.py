"""The files of a training run folder that are not models, named when a user passes one where a
model is expected (`--model RUN/checkpoint.pt`, `--vae RUN/latents.safetensors`, a run still
training): the message then says what the file is and what to pass instead, rather than how the
file failed to parse as a model."""
from __future__ import annotations

from pathlib import Path

from ldmkit.json_text import read_json_file

# The files of a run folder (train/run.py's layout); the modules that write each take its name from here.
MODEL_FILE = "model.safetensors"  # EMA UNet + VAE, for generation
VAE_FILE = "vae.safetensors"  # the VAE alone, after the VAE stage
CHECKPOINT_NAME = "checkpoint.pt"
CACHE_NAME = "latents.safetensors"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"
MODEL_FILES = (MODEL_FILE, VAE_FILE)

_NOT_MODELS = {  # a run folder's own files besides its model files
    CHECKPOINT_NAME: "the training checkpoint (for resuming)",
    CACHE_NAME: "the cache of the encoded dataset",
    LOG_NAME: "the training log",
    CONFIG_NAME: "the run's configuration",
}


def _is_run_folder(folder: Path) -> bool:
    if (folder / CHECKPOINT_NAME).is_file() or (folder / LOG_NAME).is_file():
        return True
    try:  # a run that failed at once leaves only its config.json: ldmkit's keys, not a diffusers class
        config = read_json_file(folder / CONFIG_NAME)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(config, dict) and {"vae", "diffusion"} <= config.keys() and "_class_name" not in config


def _finished(folder: Path) -> str:
    made = [name for name in MODEL_FILES if (folder / name).is_file()]
    if made:
        return f"pass the run folder {folder} (its {made[0]})"
    return ("model.safetensors appears once its training reaches the UNet stage: pass the folder then "
            "(a stopped run goes on with its own `ldm train` command)")


def run_file_message(path: str | Path) -> str | None:
    """What `path` is, when it is one of a run folder's non-model files; else None."""
    path = Path(path)
    what = _NOT_MODELS.get(path.name)
    if what is None or not _is_run_folder(path.parent):
        return None
    return f"{path} is {what} of the ldmkit run {path.parent}, not a model: {_finished(path.parent)}"


def unfinished_run_message(folder: str | Path) -> str | None:
    """A line for a run folder with no model file yet (stopped or failed before its first stage
    ended); None for anything else."""
    folder = Path(folder)
    if not folder.is_dir() or not _is_run_folder(folder) or any((folder / n).is_file() for n in MODEL_FILES):
        return None
    return f"{folder} is an ldmkit run with no model yet: {_finished(folder)}"


def run_owned_file(path: str | Path) -> bool:
    """Whether `path` names one of the files `ldm train` writes in a run folder (its models, its
    checkpoint, cache, log or config), which nothing else may replace: the run's checkpoint and its
    model belong together."""
    path = Path(path)
    return (path.name in MODEL_FILES or path.name in _NOT_MODELS) and _is_run_folder(path.parent)
