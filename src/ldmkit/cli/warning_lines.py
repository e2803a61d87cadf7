"""ldmkit's own warnings as one line each on the command line.

Python shows a warning as `/path/to/ldmkit/data/load.py:64: UserWarning: ...` followed by the
source line that raised it: noise for someone who ran `ldm train`. The warnings ldmkit itself
raises are meant for that person (skipped image files, a step that fell back to a slower path), so
while a verb runs they print as `ldm VERB: warning: ...`; warnings from PyTorch and other
libraries keep Python's format, which is what their authors' issue trackers expect to see.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from .whole_line import print_line

_PACKAGE = Path(__file__).resolve().parents[1]  # src/ldmkit


def _raised_by_ldmkit(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def warning_lines(prefix: str) -> Iterator[None]:
    """Inside the block, ldmkit's warnings print to stderr as `{prefix}: warning: MESSAGE`."""
    shown_before = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # warnings.showwarning's signature
        if _raised_by_ldmkit(filename):
            print_line(f"{prefix}: warning: {message}", file)
        else:
            shown_before(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown_before
