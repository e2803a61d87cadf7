"""Where each job of a server stands, by the id its client chose: waiting (behind how many
jobs), running (sampler steps done of how many), done, or stopped. The page polls it while its
request is out, so a job of minutes (a large model on a CPU) shows a progress bar, not a frozen
page, and a Stop button can end it.

Steps are counted as the sampler issues them (its callback; nothing waits on the device for it),
so on a GPU the count may run a step or two ahead of the kernels: the launch queue holds about
that much of a UNet's work. A stop takes effect at the job's next step (or, for a job still
waiting, before it starts): the runner is never interrupted inside a step.

Ids come from the clients (`job_id` in the request), so nothing has to answer before the job
ends; an unknown or forgotten id reads as "unknown". An id names one job at a time: while its job
waits or runs, a second job with the same id is refused (`JobIdInUse`), since its entry would
replace the first's (a running job reported as queued, a stop asked for one job lost by both).
Once the job is done or stopped its id is free: a new job's entry replaces the finished one. The
board keeps the last `keep` finished ids; a waiting or running job is never forgotten (its entry
holds its stop flag).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


ACTIVE = ("queued", "running")


class JobStopped(Exception):
    """Raised in the job's own thread at its next step after `ProgressBoard.stop`."""


class JobIdInUse(Exception):
    """`ProgressBoard.queued` for an id whose job still waits or runs (the server answers 409)."""


class ProgressBoard:
    """The jobs' states by id, shared by the request threads (queued, stop, report) and the
    runner's thread (started, advanced, finished); one lock guards them."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()  # least recently changed first
        self._tickets = 0  # queued jobs are served in the order they queued
        self._private = 0

    def _put(self, job_id: str, entry: dict[str, Any]) -> None:
        self._jobs[job_id] = entry
        self._jobs.move_to_end(job_id)
        # Only finished entries count and go, oldest first: an active job's entry holds its stop flag.
        finished = [name for name, job in self._jobs.items() if job["state"] not in ACTIVE]
        for old in finished[:max(0, len(finished) - self.keep)]:
            del self._jobs[old]

    def private_id(self) -> str:
        """An id for a job its client did not name ("#N": never a client's, which are letters, digits,
        - and _), so that the server can stop it when its client leaves."""
        with self._lock:
            self._private += 1
            return f"#{self._private}"

    def queued(self, job_id: str | None) -> None:
        """The job is waiting for the runner; `JobIdInUse` if another job with this id still waits
        or runs (checked and queued under one lock: two requests cannot both take the id)."""
        if job_id is not None:
            with self._lock:
                state = self._jobs.get(job_id, {}).get("state")
                if state in ACTIVE:
                    raise JobIdInUse(f"job_id {job_id!r} is in use by a {state} job: send another id "
                                     "(an id is free again once its job is done or stopped)")
                self._tickets += 1
                self._put(job_id, {"state": "queued", "ticket": self._tickets})

    def started(self, job_id: str | None, steps: int, batches: int = 1) -> None:
        """The job runs `steps` sampler steps in all, over `batches` batches of equal steps;
        `JobStopped` if it was stopped while it waited."""
        if job_id is not None:
            with self._lock:
                if self._jobs.get(job_id, {}).get("stop"):
                    raise JobStopped("stopped before it started")
                self._put(job_id, {"state": "running", "step": 0, "steps": steps, "batches": batches})

    def advanced(self, job_id: str | None) -> None:
        """One more sampler step of the job is done; `JobStopped` if a stop was asked for."""
        if job_id is not None:
            with self._lock:
                entry = self._jobs.get(job_id)
                if entry is None or entry["state"] != "running":
                    return
                entry["step"] = min(entry["step"] + 1, entry["steps"])
                if entry.get("stop"):
                    raise JobStopped(f"stopped at step {entry['step']} of {entry['steps']}")

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop at its next step (or not to start); False if it is not waiting or
        running (unknown, done, already stopped)."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None or entry["state"] not in ACTIVE or entry.get("stop"):
                return False
            entry["stop"] = True
            return True

    def stop_asked(self, job_id: str | None) -> bool:
        """Whether a stop was asked for the job while it still waits in the queue."""
        with self._lock:
            entry = self._jobs.get(job_id) if job_id is not None else None
            return bool(entry and entry["state"] == "queued" and entry.get("stop"))

    def finished(self, job_id: str | None, stopped: bool = False) -> None:
        """The job ended: its images were made (or it failed), or it was stopped."""
        if job_id is not None:
            with self._lock:
                self._put(job_id, {"state": "stopped" if stopped else "done"})

    def report(self, job_id: str) -> dict[str, Any]:
        """{"state": "unknown" | "queued" | "running" | "done" | "stopped"}; a queued job also says
        how many jobs are ahead of it (queued before it, or running), a running one its step and
        steps; either says "stopping": true once a stop was asked for."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:
                return {"state": "unknown"}
            report = {key: value for key, value in entry.items() if key not in ("ticket", "stop")}
            if entry.get("stop"):
                report["stopping"] = True
            if entry["state"] == "queued":
                report["ahead"] = sum(other["state"] == "running" or
                                      (other["state"] == "queued" and other["ticket"] < entry["ticket"])
                                      for other in self._jobs.values())
            return report
