"""Errors that mean "the user asked for something we cannot do".

The CLI prints a `UserError` as one clear line and exits with status 2; anything else is a bug
and keeps its traceback.
"""

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


def warn_caller(message: str) -> None:
    """`warnings.warn(message)` shown at the first frame outside ldmkit and torch: a Python caller's
    own line (a fixed stacklevel named torch's no_grad wrapper), or ldmkit's outermost frame when
    there is no such caller (a command, whose warnings then print as `ldm VERB: warning: ...`)."""
    import torch

    internal = (_PACKAGE, str(Path(torch.__file__).resolve().parent))
    frame, level, last_ldmkit = sys._getframe(1), 1, 1
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        if frame.f_code.co_filename.startswith(_PACKAGE):
            last_ldmkit = level
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=1 + (level if frame is not None else last_ldmkit))


class UserError(ValueError):
    """A mistake in the user's input (a path, a flag, a file): shown without a traceback.

    A `ValueError`, so that `except ValueError` around a call catches a bad argument whether
    ldmkit or a library under it refused it."""


@contextlib.contextmanager
def reading(what: object, *, failed: str = "cannot be read",
            advice: str = "the file is damaged, or is not what its folder says it is") -> Iterator[None]:
    """Turn a failure while reading a file someone else made into one `UserError` naming `what`:
    "WHAT FAILED (Error: first line); ADVICE".

    A damaged or mislabelled model folder (a UNet's config.json of another class, `[]` for a
    config, a tokenizer.json of garbage) fails somewhere inside diffusers' config handling,
    transformers or torch, with a KeyError or a TypeError: a user's file, not ldmkit's bug.
    OSError (the disk said no) and MemoryError keep their own handling; UserErrors pass as they are.
    """
    try:
        yield
    except (UserError, OSError, MemoryError):
        raise
    except Exception as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{what} {failed} ({type(error).__name__}: {detail}); {advice}") from None
