"""How an `ldm train` run ended, and the exit status that tells a shell.

A run stopped by Ctrl-C or SIGTERM saves its checkpoint and returns like a finished one, but
`ldm train ... && ldm generate ...` must not go on as if it had finished: it exits 128 + the
signal's number, as a shell reports a process that a signal ended (130 for SIGINT, 143 for
SIGTERM). A stop at --time-limit was asked for in the command itself and exits 0.

Under torchrun each rank has its own idea of what stopped it (a rank that the signal did not
reach learns of the stop from the others, and each rank's clock reaches the time limit at its
own moment), yet every rank must exit alike or torchrun reports a failed rank: the ranks agree
on the reason in `agreed_stop`.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from ldmkit.train.distributed import DistInfo, gather_objects
from ldmkit.train.signals import RELAYED_STOP



@dataclass(frozen=True)
class RunOutcome:
    """`run_dir`, and what stopped the run before its end (a signal's name such as "SIGINT", "the
    time limit") or None when it ran to its end or had nothing to do."""

    run_dir: Path
    stopped_by: str | None = None

    @property
    def exit_status(self) -> int:
        if self.stopped_by in signal.Signals.__members__:
            return 128 + signal.Signals[self.stopped_by].value
        return 0  # finished, the time limit, or a stop asked for through the API


def agreed_stop(name: str | None, dist: DistInfo) -> str | None:
    """The stop's reason, the same on every rank (every rank must call it): a signal that reached
    any rank (SIGINT first), else any other reason."""
    names = [n for n in gather_objects(name, dist) if n]
    for wanted in ("SIGINT", "SIGTERM"):
        if wanted in names:
            return wanted
    return next((n for n in names if n != RELAYED_STOP), names[0] if names else None)
