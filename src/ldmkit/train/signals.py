"""Graceful stop on SIGTERM / SIGINT.

A cluster scheduler sends SIGTERM before it kills a job, and a user presses Ctrl-C: either
should end training with a fresh checkpoint rather than lose the work since the last one.
The handler only sets a flag; the loop checks it after each optimizer step, saves, and
returns. A second Ctrl-C raises KeyboardInterrupt at once, for a user who does not want to
wait for the save.
"""
from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType


class StopSignal:
    """Context manager that turns SIGTERM/SIGINT into a `requested` flag while it is active.

    Outside the main thread (where Python cannot install handlers) it does nothing but still
    offers the flag, so `request()` can be used by tests and callers.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, deadline: float | None = None) -> None:
        """`deadline`: a `time.monotonic()` value after which a stop counts as requested
        (`ldm train --time-limit`); it ends training the same way a signal does."""
        self._requested = False
        self.deadline = deadline
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        if not self._requested and self.deadline is not None and time.monotonic() >= self.deadline:
            self.request("the time limit")
        return self._requested

    def request(self, name: str = "request") -> None:
        self._requested = True
        self.signal_name = self.signal_name or name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, skip the final save
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
