"""Training log: RUN/log.jsonl, an optional TensorBoard writer, and a progress line.

Only rank 0 logs (other ranks get a logger with `enabled=False` that does nothing). Every
record is one JSON object per line in log.jsonl, appended and flushed, so a resumed run
continues the same file and a crash loses at most the line being written. TensorBoard is
used only if the `tensorboard` package is importable. The console shows a tqdm bar with the
step, loss, images/s and ETA; in `quiet` mode it prints one plain line per `metrics` call instead
(the stages call it every `log_every` steps). Quiet is also what a console that is not a terminal
gets (stderr redirected to a file, a batch job's log): a bar there is a carriage-return update
every 0.1 s, thousands of lines of noise in the file for a run of minutes (seen in a GPU job's
log, benchmarks/NOTES.md v13).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ldmkit.run_files import LOG_NAME


def _tensorboard_writer(folder: Path) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except Exception:  # ImportError, or a broken tensorboard install: logging must not fail
        return None
    return SummaryWriter(log_dir=str(folder))


def _json_safe(value: Any) -> Any:
    """Non-finite floats become strings: JSON has no NaN and log readers choke on it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # no isatty, or a closed or detached stream
        return False


class TrainLogger:
    """Writes metrics for one stage of a run; use one per stage (`stage` names it)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        stage: str,
        total_steps: int,
        start_step: int = 0,
        quiet: bool = False,
        enabled: bool = True,
    ) -> None:
        self.stage = stage
        self.total_steps = total_steps
        self.quiet = quiet or not _is_terminal(sys.stderr)
        self.enabled = enabled
        self._bar: tqdm | None = None
        self._tb = None
        self._file = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(run_dir / LOG_NAME, "a", encoding="utf-8")
        self._tb = _tensorboard_writer(run_dir / "tensorboard")
        if not self.quiet:
            self._bar = tqdm(
                total=total_steps, initial=start_step, desc=stage, unit="step",
                dynamic_ncols=True, file=sys.stderr, smoothing=0.05,
            )

    def message(self, text: str) -> None:
        """A line for the user (kept out of the progress bar's way) and for log.jsonl."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)
        self.record({"event": "message", "text": text})

    def record(self, data: dict[str, Any]) -> None:
        """Append one JSON line to log.jsonl (with the stage and wall time)."""
        if not self.enabled or self._file is None:
            return
        row = {"stage": self.stage, "time": round(time.time(), 3)}
        row.update({k: _json_safe(v) for k, v in data.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Record scalar metrics at `step`, and put them on the console."""
        if not self.enabled:
            return
        self.record({"step": step, **values})
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{self.stage}/{key}", value, step)
        text = " ".join(f"{k} {_format(v)}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
        else:
            print(f"{self.stage} step {step}/{self.total_steps} {text}", file=sys.stderr, flush=True)

    def advance(self, steps: int = 1) -> None:
        """Move the progress bar (call once per optimizer step)."""
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
