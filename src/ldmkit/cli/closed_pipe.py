"""Output to a pipe whose reader has left (`ldm train ... 2>&1 | head -2`): the job goes on.

Python raises BrokenPipeError at the first write after the reader closed its end. Raised inside
a training step's log line, it ended `ldm train` before its next checkpoint, with exit status 0:
the run stopped, unsaved, and the shell saw success. While a verb runs, its stdout and stderr
drop their writes once the reader is gone instead, and the work (and its saving) goes on; the
descriptor is pointed at the null device then, so that Python's flush at exit cannot fail again.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO


class OutputAfterReaderLeft:
    """`stream`, writing until a write or flush finds the pipe's reader gone, then nothing."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_left = False

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._left()
        return len(text)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._left()

    def _left(self) -> None:
        self.reader_left = True
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no descriptor (a test's capture)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self._stream, name)


@contextlib.contextmanager
def outputs_survive_a_closed_pipe() -> Iterator[None]:
    """sys.stdout and sys.stderr wrapped in `OutputAfterReaderLeft` for the block."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = OutputAfterReaderLeft(sys.stdout), OutputAfterReaderLeft(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
