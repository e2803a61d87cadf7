"""`ldm serve`: a web page and a JSON API that generate from one loaded model.

`GenerationService` checks and runs requests (one job at a time); `make_server` puts it behind
the standard library's threading HTTP server with the page in `page.html`.
"""

from .server import make_server
from .service import GeneratedImages, GenerationService, Limits

__all__ = ["GeneratedImages", "GenerationService", "Limits", "make_server"]
