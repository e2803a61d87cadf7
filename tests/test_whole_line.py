"""Messages that several torchrun processes may print at once go out as one write each (text and
newline together), so that two processes' lines cannot join on the shared stderr."""
from __future__ import annotations

import warnings

from ldmkit.cli import main
from ldmkit.cli.warning_lines import warning_lines
from ldmkit.cli.whole_line import print_line


class Recorder:
    """A stream that keeps each write apart, as an unbuffered stderr hands them to the OS."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_print_line_is_one_write():
    stream = Recorder()
    print_line("ldm train [rank 1]: error: lost contact", stream)
    assert stream.writes == ["ldm train [rank 1]: error: lost contact\n"]


def test_an_error_and_a_warning_are_one_write_each(monkeypatch, tmp_path):
    stream = Recorder()
    monkeypatch.setattr("sys.stderr", stream)
    assert main(["generate", "--steps", "0", "--out", str(tmp_path / "out")]) == 2
    errors = [text for text in stream.writes if "error:" in text]
    assert errors == ["ldm generate: error: --steps must be at least 1 (got 0)\n"]

    stream.writes.clear()
    with warning_lines("ldm train [rank 1]"):
        warnings.warn_explicit("skipped 3 unreadable images", UserWarning, __import__("ldmkit").__file__, 1)
    assert stream.writes == ["ldm train [rank 1]: warning: skipped 3 unreadable images\n"]
