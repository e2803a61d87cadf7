"""Where each job of a server stands, by the id its client chose: waiting (behind how many
jobs), running (sampler steps done of how many), or done. The page polls it while its request
is out, so a job of minutes (a large model on a CPU) shows a progress bar, not a frozen page.

Steps are counted as the sampler issues them (its callback; nothing waits on the device for it),
so on a GPU the count may run a step or two ahead of the kernels: the launch queue holds about
that much of a UNet's work.

Ids come from the clients (`job_id` in the request), so nothing has to answer before the job
ends; an unknown or forgotten id reads as "unknown". The board keeps the last `keep` ids.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ProgressBoard:
    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()  # least recently changed first
        self._tickets = 0  # queued jobs are served in the order they queued

    def _put(self, job_id: str, entry: dict[str, Any]) -> None:
        self._jobs[job_id] = entry
        self._jobs.move_to_end(job_id)
        while len(self._jobs) > self.keep:
            self._jobs.popitem(last=False)

    def queued(self, job_id: str | None) -> None:
        """The job is waiting for the runner."""
        if job_id is not None:
            with self._lock:
                self._tickets += 1
                self._put(job_id, {"state": "queued", "ticket": self._tickets})

    def started(self, job_id: str | None, steps: int) -> None:
        """The job runs `steps` sampler steps in all (over all its batches)."""
        if job_id is not None:
            with self._lock:
                self._put(job_id, {"state": "running", "step": 0, "steps": steps})

    def advanced(self, job_id: str | None) -> None:
        """One more sampler step of the job is done."""
        if job_id is not None:
            with self._lock:
                entry = self._jobs.get(job_id)
                if entry is not None and entry["state"] == "running":
                    entry["step"] = min(entry["step"] + 1, entry["steps"])

    def finished(self, job_id: str | None) -> None:
        """The job ended (its images were made, or it failed)."""
        if job_id is not None:
            with self._lock:
                self._put(job_id, {"state": "done"})

    def report(self, job_id: str) -> dict[str, Any]:
        """{"state": "unknown" | "queued" | "running" | "done"}; a queued job also says how many
        jobs are ahead of it (queued before it, or running), a running one its step and steps."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:
                return {"state": "unknown"}
            report = {key: value for key, value in entry.items() if key != "ticket"}
            if entry["state"] == "queued":
                report["ahead"] = sum(other["state"] == "running" or
                                      (other["state"] == "queued" and other["ticket"] < entry["ticket"])
                                      for other in self._jobs.values())
            return report
