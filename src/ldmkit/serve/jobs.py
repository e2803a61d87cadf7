"""Generation jobs run on one thread, whichever thread the HTTP request arrived on.

The HTTP server answers each request on a thread of its own; the model must not follow it
there. torch.compile's CUDA graphs (inductor's cudagraph trees) keep their state in the thread
that set them up: a compiled UNet called from a request's thread stopped with an assertion inside
`cudagraph_trees.get_obj` on an H200 (benchmarks/NOTES.md v19). So request threads hand their job
to a `JobRunner` and wait, and one thread (in `ldm serve`, the main one, where everything else
that touches the model ran) runs the jobs in arrival order, one at a time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
WAIT_POLL_S = 0.25


class ServerStopping(Exception):
    """The job was queued or running when the server was stopped: answered 503, not as a failure."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; send the request again once it is back")


class JobCancelled(Exception):
    """`submit`'s `cancel_if` said so while the job still waited: it will not run."""


class _Job:
    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = self.cancelled = False  # under the runner's lock


class JobRunner:
    """`submit(work)` from any thread returns `work()` as run by the thread in `run`."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, work: Callable[[], T], while_waiting: Callable[[], object] | None = None,
               cancel_if: Callable[[], bool] | None = None) -> T:
        """Queue `work`, wait for the runner thread to run it, and return its result (or raise
        its exception here, in the caller's thread); `ServerStopping` once `run` has ended.
        `while_waiting` is called every WAIT_POLL_S meanwhile (the server checks its client there);
        `JobCancelled` as soon as `cancel_if()` is true while the job has not started (a job stopped
        in the queue was answered only once the job ahead of it had ended, half a minute later)."""
        job = _Job(work)
        with self._lock:  # a job queued after close() would wait forever
            if self._closed:
                raise ServerStopping()
            self._jobs.put(job)
        while not job.done.wait(WAIT_POLL_S):
            if while_waiting is not None:
                while_waiting()
            if cancel_if is not None and cancel_if():
                with self._lock:
                    if not job.started:  # else it runs, and sees the stop itself at its next step
                        job.cancelled = True
                        raise JobCancelled()
        if job.error is not None:
            raise job.error
        return job.result

    def run(self, stop: threading.Event | None = None) -> None:
        """Run submitted jobs until `stop` is set (or forever); the short wait between checks keeps
        Ctrl-C (KeyboardInterrupt, delivered to the main thread) prompt."""
        try:
            while stop is None or not stop.is_set():
                try:
                    job = self._jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
                with self._lock:
                    if job.cancelled:
                        continue
                    job.started = True
                try:
                    job.result = job.work()
                except KeyboardInterrupt:
                    job.error = ServerStopping()
                    raise
                except BaseException as err:  # handed to the waiting request thread, which answers with it
                    job.error = err
                finally:
                    job.done.set()
        finally:
            self._close()

    def _close(self) -> None:
        """Refuse new jobs and answer the queued ones with `ServerStopping` (their requests would
        otherwise wait until the process ends, and get no answer at all)."""
        with self._lock:
            self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            job.error = ServerStopping()
            job.done.set()
