"""JSON written by other programs or people: every way the parser can fail is a ValueError.

`json.loads` raises RecursionError, not ValueError, for arrays nested a few thousand deep, so a
reader that catches ValueError (as every reader of a user's file here does) let a 200 kB file
end in a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def loads(text: str | bytes) -> Any:
    """`json.loads(text)`; ValueError (json.JSONDecodeError, UnicodeDecodeError, or one saying the
    nesting is too deep) for anything that is not readable JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to read") from None


def read_json_file(path: str | Path) -> Any:
    """The JSON in the file at `path` (UTF-8); OSError or ValueError as `loads`."""
    return loads(Path(path).read_text(encoding="utf-8"))
