"""Models shipped inside the package, so `ldm generate` works right after `pip install`.

Each bundled model is an ldmkit inference file (written by `ldm convert RUN FILE --dtype fp16`)
lying next to this module. Loaders pass whatever the user typed through `resolve_model_source`:
an existing file or model folder always wins, so a run folder that happens to be called `emoji`
still loads; otherwise a bundled name (any case) becomes its file; anything else is passed on
unchanged so the loaders' own "no such model" errors still speak.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from ldmkit.errors import UserError
from ldmkit.run_files import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, MODEL_FILES

DEFAULT_MODEL = "emoji"
BUNDLED = {
    "emoji": "emoji.safetensors",
    "fashion-mnist": "fashion-mnist.safetensors",
}
# What to train for each name when the file is not in this install (the `--data` of `ldm train`).
TRAIN_DATA = {"emoji": "emoji", "fashion-mnist": "fashion-mnist"}


def bundled_dir() -> Path:
    """The folder holding the bundled files (this package's own folder; tests point it elsewhere)."""
    return Path(str(files(__name__)))


def bundled_names() -> list[str]:
    """Every name a bundled model may be asked for, whether or not its file is installed."""
    return list(BUNDLED)


def available_names() -> list[str]:
    """The bundled names whose file is present in this install."""
    return [name for name, file in BUNDLED.items() if (bundled_dir() / file).is_file()]


def bundled_model_path(name: str) -> Path:
    """The file of bundled model `name` (any case); `UserError` if unknown or not installed."""
    key = name.lower()
    if key not in BUNDLED:
        raise UserError(f"no bundled model named {name!r}; bundled models: {', '.join(BUNDLED)}")
    path = bundled_dir() / BUNDLED[key]
    if not path.is_file():
        present = ", ".join(available_names()) or "none"
        raise UserError(
            f"the bundled model {key!r} is not in this install ({path} is missing; bundled models present: "
            f"{present}). Train one with `ldm train --data {TRAIN_DATA[key]} --preset {key} --out RUN` "
            "(on a GPU) and pass --model RUN"
        )
    return path


# Any of these in a folder makes it a model (or a run) that its name must reach, even a bundled name.
_MODEL_MARKERS = (*MODEL_FILES, "model_index.json", CONFIG_NAME, CHECKPOINT_NAME, LOG_NAME)


def resolve_model_source(source: str | os.PathLike) -> str | os.PathLike:
    """`source` itself when it is a file, a folder holding a model, or no bundled name; else the
    bundled file it names. A folder of other things (`ldm generate --out emoji`'s images) does not
    hide the bundled model of its name."""
    path = Path(source)
    if str(source).lower() not in BUNDLED or path.is_file():
        return source
    if path.is_dir() and any((path / marker).exists() for marker in _MODEL_MARKERS):
        return source
    return bundled_model_path(str(source))


__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "available_names",
    "bundled_dir",
    "bundled_model_path",
    "bundled_names",
    "resolve_model_source",
]
