"""Atomic, code-free training checkpoints.

A checkpoint is replaced, never rewritten in place (`ldmkit.atomic.atomic_write`: temporary
file, fsync, `os.replace`, folder fsync). A crash at any point leaves either the previous
checkpoint or the new one, never half of one.

The state is saved with `torch.save` and loaded with `torch.load(weights_only=True)`, so it
may hold only tensors, dicts, lists, tuples, ints, floats, strings, bools and None: loading a
checkpoint never runs code from the file.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from ldmkit.atomic import atomic_write
from ldmkit.errors import UserError, reading

FORMAT = "ldmkit-train-state"
FORMAT_VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save a full training state atomically (see the module docstring).

    `state` must be loadable with `weights_only=True`; a `format` tag is added so that
    `load_training_state` can tell an ldmkit checkpoint from any other pickle.
    """
    tagged = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    # Serialised in memory, then written: torch.save into the file turned a full disk into a
    # RuntimeError from its zip writer ("unexpected pos ..."), a traceback instead of one line.
    buffer = io.BytesIO()
    torch.save(tagged, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_training_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a state written by `save_training_state`, without unpickling any code.

    Raises `UserError` if the file is missing, truncated, corrupt, or not an ldmkit
    checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, pickle and EOF errors all mean "not a readable checkpoint"
        raise UserError(f"checkpoint {path} is unreadable or corrupt ({_why_unreadable(path, e)}); "
                        "restore a copy, or start over in a new --out folder") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an ldmkit training checkpoint")
    version = state.get("format_version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} was written by a newer ldmkit (format {state['format_version']}); "
            "upgrade ldmkit to resume it"
        )
    return state


def check_run_state(state: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """`state` (a run's checkpoint, as `ldm train` writes it) if it holds what a resume reads;
    UserError naming the first missing or damaged entry otherwise."""
    problem = _structure_problem(state)
    if problem:
        raise UserError(f"checkpoint {path} is damaged ({problem}); restore a copy, or start over in a new --out "
                        "folder")
    return state


def loading_run_state(path: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """Turn a failure while the trainers take in a checkpoint's tensors (a weight of another shape,
    a damaged optimizer state: PyTorch's RuntimeError, KeyError, ...) into one UserError."""
    return reading(f"checkpoint {path}", failed="does not hold what this run needs",
                   advice="restore a copy, or start over in a new --out folder")


# What each stage's state holds (the trainers' `state_dict`s and run.py's additions), by kind.
_COMMON = {"format_version": int, "stage": str, "step": int, "offset": int, "config": dict, "optimizer": dict,
           "rng": list, "generator": torch.Tensor}
_BY_STAGE = {"vae": {"vae": dict}, "diffusion": {"unet": dict, "ema": dict, "vae": dict}}


def _structure_problem(state: dict[str, Any]) -> str | None:
    """What is missing from `state` or of the wrong kind, or None. Damage found here is one line;
    found while the trainers load it, it was a KeyError or TypeError traceback."""
    stage = state.get("stage")
    if stage not in _BY_STAGE:
        return f"stage {stage!r}"
    for key, kind in {**_COMMON, **_BY_STAGE[stage]}.items():
        value = state.get(key)
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            return f"{key} is {'missing' if key not in state else repr(value)[:60]}"
    if stage == "diffusion" and not isinstance(state["ema"].get("module"), dict):
        return "the EMA's weights are missing"
    average = state.get("vae_ema")  # the VAE's moving average: only with vae.ema_decay > 0
    if stage == "vae" and average is not None and not (
            isinstance(average, dict) and isinstance(average.get("module"), dict)):
        return "the VAE's moving average is damaged"
    return None


def _why_unreadable(path: Path, error: Exception) -> str:
    """A short reason for a failed load. torch's own messages run to paragraphs (the weights-only
    one to a dozen lines of advice on loading untrusted code) and a cut at a fixed length ends
    mid-sentence, so: the file's kind when that explains it, else torch's first sentence."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as e:
        return e.strerror or type(e).__name__
    if not head:
        return "the file is empty"
    if head != _ZIP_MAGIC:
        return "not a PyTorch file"
    text = str(error)
    if text.startswith("Weights only load failed"):
        return "it holds Python objects besides tensors and plain values, which ldmkit does not unpickle"
    first = text.strip().splitlines()[0].split(". ")[0].rstrip(".") if text.strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
