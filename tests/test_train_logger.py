"""The training console: a progress bar on a terminal, plain lines in a log file."""
from __future__ import annotations

import io
import json

from ldmkit.train.logger import TrainLogger


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _log_run(tmp_path, stream, monkeypatch, **kw) -> tuple[TrainLogger, str]:
    monkeypatch.setattr("sys.stderr", stream)
    log = TrainLogger(tmp_path, stage="diffusion", total_steps=100, **kw)
    for step in range(1, 101):
        log.advance()
        if step % 50 == 0:
            log.metrics(step, {"loss": 0.5, "img_per_s": 1234.0})
    log.close()
    return log, stream.getvalue()


def test_a_terminal_gets_a_progress_bar(tmp_path, monkeypatch):
    log, text = _log_run(tmp_path, _Terminal(), monkeypatch)
    assert not log.quiet
    assert "\r" in text and "100/100" in text  # tqdm redraws in place
    assert "diffusion step 50/100" not in text


def test_a_redirected_stderr_gets_plain_lines(tmp_path, monkeypatch):
    log, text = _log_run(tmp_path, io.StringIO(), monkeypatch)
    assert log.quiet
    assert "\r" not in text
    lines = text.splitlines()
    assert lines == ["diffusion step 50/100 loss 0.5 img_per_s 1234", "diffusion step 100/100 loss 0.5 img_per_s 1234"]
    # log.jsonl is written either way
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [50, 100]


def test_quiet_on_a_terminal_gets_plain_lines(tmp_path, monkeypatch):
    log, text = _log_run(tmp_path, _Terminal(), monkeypatch, quiet=True)
    assert log.quiet and "\r" not in text and "diffusion step 100/100" in text
