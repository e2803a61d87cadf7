"""Atomic, code-free training checkpoints.

A checkpoint is replaced, never rewritten in place: the new bytes go to a temporary file in
the same folder, are flushed and fsync'ed, and only then `os.replace` swaps the name over
(an atomic rename on POSIX and Windows). A crash at any point leaves either the previous
checkpoint or the new one, never half of one. The folder is fsync'ed afterwards so that the
rename itself survives a power cut.

The state is saved with `torch.save` and loaded with `torch.load(weights_only=True)`, so it
may hold only tensors, dicts, lists, tuples, ints, floats, strings, bools and None: loading a
checkpoint never runs code from the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable

import torch

from ldmkit.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "ldmkit-train-state"
FORMAT_VERSION = 1


def _fsync_directory(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through `write(file)` so that `path` is always either old or new, whole.

    The temporary file lives in the same folder (a rename across file systems is a copy,
    not atomic) and is removed if anything fails before the swap.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save a full training state atomically (see the module docstring).

    `state` must be loadable with `weights_only=True`; a `format` tag is added so that
    `load_training_state` can tell an ldmkit checkpoint from any other pickle.
    """
    tagged = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    atomic_write(path, lambda f: torch.save(tagged, f))


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
        raise UserError(
            f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {str(e)[:200]}); "
            "delete it to start over, or restore a copy"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an ldmkit training checkpoint")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} was written by a newer ldmkit (format {state['format_version']}); "
            "upgrade ldmkit to resume it"
        )
    return state
