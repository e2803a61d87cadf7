"""`ldm generate`'s image files, written on worker threads while the next batch is sampled.

Each sample PNG is encoded, written to a temporary name, fsync'ed, renamed and its folder
fsync'ed (`ldmkit.atomic`): about a millisecond an image on a local disk, more on a network one.
A compiled GPU job makes an emoji-sized image in under a millisecond, so writing in the
sampling thread would leave the GPU idle for as long as it worked. PNG encoding (zlib) and the
fsyncs release the GIL, so a few threads write while the main thread launches the next batch.

At most about two batches are in memory: `wait_for(limit)` blocks the producer until no more
than `limit` writes are outstanding. A Ctrl-C reaches only the main thread; the writes already
handed over are finished (they are images already made) before the job reports its count, so
the count is exactly the files in place. The first failed write (disk full, read-only) stops the
job: writes not yet started are dropped and the error is raised where the job waits.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ldmkit.errors import UserError

THREADS_VARIABLE = "LDMKIT_WRITE_THREADS"
DEFAULT_THREADS = 4  # fastest beside the sampling thread on the H200 (NOTES v27); 8 contended for the GIL


def writer_threads() -> int:
    """How many threads write: `LDMKIT_WRITE_THREADS`, else 4."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_THREADS
    try:
        threads = int(text)
    except ValueError:
        raise UserError(f"{THREADS_VARIABLE}={text!r}: give a whole number of threads, 1 to 64") from None
    if not 1 <= threads <= 64:
        raise UserError(f"{THREADS_VARIABLE}={threads}: give 1 to 64 threads")
    return threads


class _Skipped(Exception):
    """A write not attempted because an earlier one failed."""


class BackgroundWrites:
    """`write(item, path)` calls run on `threads` worker threads.

    Use as a context manager; `written` counts the writes that completed.
    """

    def __init__(self, write: Callable[[Any, Path], None], threads: int):
        self._write = write
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ldm-write")
        self._pending: collections.deque[Future] = collections.deque()
        self._failure: BaseException | None = None  # the first failed write's error: later writes are skipped
        self.written = 0

    def put(self, item: Any, path: Path) -> None:
        """Hand over one write."""
        self._pending.append(self._pool.submit(self._guarded_write, item, path))

    def _guarded_write(self, item: Any, path: Path) -> None:
        if self._failure is not None:  # a full disk fails the next write too: stop at the first
            raise _Skipped
        try:
            self._write(item, path)
        except BaseException as err:
            self._failure = self._failure or err
            raise

    def wait_for(self, limit: int) -> None:
        """Block until at most `limit` writes are outstanding; a failed write is raised here."""
        while len(self._pending) > limit:
            self._settle(self._pending.popleft())

    def _settle(self, future: Future) -> None:
        try:
            future.result()  # the write's own error (a `UserError` from the caller's wrapper)
        except _Skipped:
            # Skipped for a failure that may lie later in the queue (threads finish out of order):
            # that failure is the error to report, never the internal skip.
            raise self._failure from None
        self.written += 1

    def finish(self) -> int:
        """Wait for every write handed over; returns how many completed."""
        self.wait_for(0)
        return self.written

    def finish_after_interrupt(self) -> int:
        """After a Ctrl-C: let the outstanding writes end (their images were made), count those that
        completed, and swallow their failures (the interrupt is what the user is told about)."""
        while self._pending:
            try:
                self._settle(self._pending.popleft())
            except Exception:  # noqa: BLE001 - a write that failed is simply not counted
                pass
        return self.written

    def __enter__(self) -> BackgroundWrites:
        return self

    def __exit__(self, kind, error, trace) -> None:
        # After a failed write or another error, writes not yet started are dropped; those running
        # finish (a file is whole or absent either way: `ldmkit.atomic`).
        failed = kind is not None and not issubclass(kind, KeyboardInterrupt)
        self._pool.shutdown(wait=True, cancel_futures=failed)
