"""`ldm serve`: a web page and a JSON API that generate from one loaded model.

`GenerationService` checks and runs requests (one job at a time); `make_server` puts it behind
the standard library's threading HTTP server with the page in `page.html`, and a `JobRunner`
runs the jobs on one thread of the caller's choosing (`ldm serve`: the main thread).
"""

from .jobs import JobRunner
from .server import make_server
from .service import GeneratedImages, GenerationService, Job, Limits

__all__ = ["GeneratedImages", "GenerationService", "Job", "JobRunner", "Limits", "make_server"]
