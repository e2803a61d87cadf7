"""One message line as one write.

Under torchrun every process of a job shares the terminal's stderr, and each may report (an
error, a warning, "lost contact with another process"). `print` writes the text and then the
newline: two writes when Python's streams are unbuffered (`PYTHONUNBUFFERED=1`, common in job
scripts), so two processes' lines could join into one. A line written whole, and flushed, stays
whole: writes of up to PIPE_BUF (4096) bytes to a pipe are atomic on POSIX.
"""
from __future__ import annotations

import sys
from typing import TextIO


def print_line(text: str, file: TextIO | None = None) -> None:
    """`text` and its newline in one write to `file` (default: stderr), flushed."""
    stream = file if file is not None else sys.stderr
    stream.write(text + "\n")
    stream.flush()
