"""Environment switches of the fast paths, read once when ldmkit is imported (a compiled graph
must not read the environment while it is traced), and whether Triton can be imported."""

from __future__ import annotations

import importlib.util
import os

TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def switch_on(name: str) -> bool:
    """False when the environment variable `name` says 0 / off / false / no; True otherwise."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "off", "false", "no")
