"""Graceful stop on SIGTERM / SIGINT.

A cluster scheduler sends SIGTERM before it kills a job, and a user presses Ctrl-C: either
should end training with a fresh checkpoint rather than lose the work since the last one.
The handler only sets a flag; the loop checks it after each optimizer step, saves, and
returns. A second Ctrl-C raises KeyboardInterrupt at once, for a user who does not want to
wait for the save.

Under torchrun the workers' signals come from torchrun, which forwards the first signal it gets
to each worker (torch.distributed.elastic's `PContext.close`, which waits 30 s before SIGKILL).
Where the workers share the terminal's process group, one Ctrl-C also reaches them directly, so
it arrives twice; taken as a second Ctrl-C, the copy skipped the save. So under torchrun a SIGINT
within `TORCHRUN_ECHO_S` of the first is the same Ctrl-C. (torch 2.13's torchrun starts its
workers in sessions of their own and sends a second Ctrl-C on as SIGTERM: the save goes on, and
torchrun kills the workers 30 s later. So under torchrun the first line promises no quick quit.)
"""
from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType, TracebackType


# The name a rank gives a stop that another rank asked for (the all-reduced flag says only that
# one did); run_outcome.agreed_stop swaps it for that rank's own reason.
RELAYED_STOP = "a signal on another rank"


class StopSignal:
    """Context manager that turns SIGTERM/SIGINT into a `requested` flag while it is active.

    Outside the main thread (where Python cannot install handlers) it does nothing but still
    offers the flag, so `request()` can be used by tests and callers.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    TORCHRUN_ECHO_S = 2.0  # torchrun's copy of the terminal's SIGINT follows it by milliseconds

    def __init__(self, deadline: float | None = None, *, announce: bool = False,
                 under_torchrun: bool | None = None) -> None:
        """`deadline`: a `time.monotonic()` value after which a stop counts as requested
        (`ldm train --time-limit`); it ends training the same way a signal does.
        `announce`: say on stderr, when the first signal comes, that the run will save and stop
        (one process of a torchrun job says it). `under_torchrun`: None reads torchrun's
        environment."""
        self._requested = False
        self.deadline = deadline
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self.announce = announce
        if under_torchrun is None:
            under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
        self.under_torchrun = under_torchrun
        self._first_sigint: float | None = None
        self._signalled = False

    @property
    def requested(self) -> bool:
        if not self._requested and self.deadline is not None and time.monotonic() >= self.deadline:
            self.request("the time limit")
        return self._requested

    @property
    def signalled(self) -> bool:
        """Whether a signal (not the time limit, not `request`) asked for the stop."""
        return self._signalled

    def request(self, name: str = "request") -> None:
        self._requested = True
        self.signal_name = self.signal_name or name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now, name = time.monotonic(), signal.Signals(signum).name
        if signum == signal.SIGINT:
            first = self._first_sigint
            if self.under_torchrun and first is not None and now - first < self.TORCHRUN_ECHO_S:
                return  # torchrun's copy of the same Ctrl-C
            if self._signalled:
                raise KeyboardInterrupt  # second Ctrl-C: stop now, skip the final save
            self._first_sigint = now
        if not self._signalled and self.announce:
            self._say_stopping(name)
        self._signalled = True
        self.request(name)

    def _say_stopping(self, name: str) -> None:
        """One line at once, so a user does not press Ctrl-C again during a long step or
        compile. os.write, not print: a handler that prints while the interrupted code is
        printing raises "reentrant call"."""
        quick_quit = name == "SIGINT" and not self.under_torchrun
        again = " (Ctrl-C again to quit at once, without saving)" if quick_quit else ""
        try:
            os.write(2, f"\n{name}: stopping; a checkpoint is saved first{again}\n".encode())
        except OSError:
            pass  # stderr closed: the stop itself goes on

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
