"""The HTTP side of `ldm serve`: the web page and a small JSON API, on the standard library's
threading HTTP server (no web framework to install for one page and four endpoints).

    GET  /               the page (`page.html`): a form built from /api/info, images below it
    GET  /api/info       the model: kind, classes, image size, samplers, defaults, limits
    GET  /api/progress?job=ID   where the job the client named ID stands (`progress.py`)
    POST /api/stop       {"job_id": ID}: stop that job at its next step (its request then
                         answers 409 with {"error": "stopped at step k of n", "stopped": true})
    POST /api/generate   a JSON request (`service.GenerationService`; img2img's start image
                         and inpainting's mask inside it as base64) -> JSON: the images as
                         base64 PNGs, their seeds, class names and class ids, seconds taken, notes (a
                         prompt the text encoder cut); a 409 when its
                         job_id names a job that still waits or runs (`progress.py`)

A request another site's page sent (its Origin, or a Host that is not this loopback server's) is
a 403 (`origin.py`); a method a path does not take, a 405 in JSON. A stop asked for a job that
still waits answers that job's request 409 at once.
A mistake in a request is a 400 with {"error": "..."} in the words `ldm generate` would use;
a job queued or running when the server is stopped is a 503; anything else that fails is a 500
whose traceback goes to the server's stderr, not the client. A client that leaves before its
answer (a closed tab) has its job stopped at the next step (or before it starts), and is no error.
"""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ldmkit.errors import UserError

from .jobs import JobCancelled, JobRunner, ServerStopping
from .origin import address_family, foreign_request
from .progress import JobIdInUse, JobStopped
from .service import JOB_ID, GenerationService

MAX_BODY_BYTES = 16 * 1024 * 1024  # a few fields and at most two images (a 1024 px PNG is ~2-4 MB in base64)
DRAIN_FACTOR = 4  # a body over MAX_BODY_BYTES is read and dropped up to this many times it; a larger one not at all


class _BodyTooLarge(Exception):
    """A request body over MAX_BODY_BYTES: answered 413, not read."""


def page_html() -> bytes:
    return resources.files("ldmkit.serve").joinpath("page.html").read_bytes()


class _RequestHandler(BaseHTTPRequestHandler):
    service: GenerationService  # set on the subclass `make_server` builds
    runner: JobRunner | None = None
    quiet: bool = False
    allowed_hosts: tuple[str, ...] = ()  # `ldm serve --allow-host`: a reverse proxy's names (origin.py)
    server_version = "ldmkit"
    timeout = 60  # seconds a client may stall mid-request (one sent a byte of its body and held a thread)

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self._refused():
            return
        url = urlsplit(self.path)
        path = url.path
        if path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif path in ("/api/generate", "/api/stop"):
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{path} takes POST"}, allow="POST")
        elif path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, page_html(), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._send_json(HTTPStatus.OK, self.service.describe())
        elif path == "/api/progress":
            job_id = parse_qs(url.query).get("job", [""])[0]
            if not JOB_ID.fullmatch(job_id):
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": "name the job: /api/progress?job=ID"})
            else:
                self._send_json(HTTPStatus.OK, self.service.progress.report(job_id))
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})

    def do_HEAD(self) -> None:  # noqa: N802 (uptime checks, `curl -I`): GET's status and headers
        self._head_only = True
        self.do_GET()

    def _other_method(self) -> None:
        self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.command} is not served: GET the page, "
                                                                 "/api/info or /api/progress; POST /api/generate "
                                                                 "or /api/stop"}, allow="GET, HEAD, POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

    def _refused(self) -> bool:
        """Answer 403 (and say True) for a request another web site's page sent: its Origin is not this
        server, or its Host is not the loopback name this server listens on (DNS rebinding)."""
        why = foreign_request(self.headers, self.server.server_address[0], self.allowed_hosts)
        if why:
            self._send_json(HTTPStatus.FORBIDDEN, {"error": why})
        return bool(why)

    def do_POST(self) -> None:  # noqa: N802
        if self._refused():
            return
        path = urlsplit(self.path).path
        if path == "/api/stop":
            self._stop()
            return
        if path != "/api/generate":
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {path}"})
            return
        with self.server.answering():  # type: ignore[attr-defined]  (_Server's)
            self._generate()

    def _generate(self) -> None:
        try:
            job = self.service.prepare(self._read_json())  # mistakes answered at once, even mid-job
            self.service.progress.queued(job.job_id)
            if self.runner is None:
                result = self.service.run(job)
            else:  # a client that leaves (a closed tab) has its job stopped: nobody waits for it
                result = self.runner.submit(lambda: self.service.run(job),
                                            while_waiting=lambda: self._stop_if_client_left(job.job_id),
                                            cancel_if=lambda: self.service.progress.stop_asked(job.job_id))
        except UserError as err:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        except JobStopped as err:
            self._send_json(HTTPStatus.CONFLICT, {"error": str(err), "stopped": True})
            return
        except JobIdInUse as err:  # refused before it queued: the other job's entry stays as it was
            self._send_json(HTTPStatus.CONFLICT, {"error": str(err)})
            return
        except _BodyTooLarge as err:
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(err)})
            return
        except ServerStopping as err:
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(err)})
            return
        except JobCancelled:  # stopped while it waited behind another job: answered now, not after that one
            self.service.progress.finished(job.job_id, stopped=True)
            self._send_json(HTTPStatus.CONFLICT, {"error": "stopped before it started", "stopped": True})
            return
        except Exception as err:  # the server keeps serving; the details go to its own log
            traceback.print_exc(file=sys.stderr)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                            {"error": f"generation failed ({type(err).__name__}); the server's log has the details"})
            return
        self._send_json(HTTPStatus.OK, {
            "images": ["data:image/png;base64," + base64.b64encode(png).decode("ascii") for png in result.pngs],
            "seeds": result.seeds,
            "classes": result.classes,
            "labels": result.labels,
            "seconds": round(result.seconds, 3),
            "notes": result.notes,
        })

    def _stop(self) -> None:
        try:
            request = self._read_json()
        except UserError as err:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        except _BodyTooLarge as err:
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(err)})
            return
        job_id = request.get("job_id") if isinstance(request, dict) else None
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):  # a private "#N" id is nobody's to stop
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": 'send {"job_id": ID}, the id the job was sent with'})
            return
        self._send_json(HTTPStatus.OK, {"stopped": self.service.progress.stop(job_id)})

    # ----------------------------------------------------------------- helpers
    def _stop_if_client_left(self, job_id: str | None) -> None:
        if job_id is not None and self._client_left():
            self.service.progress.stop(job_id)

    def _client_left(self) -> bool:
        """Whether the client closed its connection: readable, and nothing to read (a pipelined
        next request would be something). A client that only shuts down its sending side after
        the request looks the same from here and counts as gone, as nginx counts it (499)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset by the peer
            return True

    def _read_json(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not re.fullmatch(r"[0-9]+", length):  # ASCII: "²" is a digit to isdigit
            raise UserError("send the request as a JSON body with a Content-Length")
        if int(length) > MAX_BODY_BYTES:
            left = int(length) if int(length) <= DRAIN_FACTOR * MAX_BODY_BYTES else 0
            while left > 0:  # read and dropped, so that a client still sending hears the 413 (a socket
                chunk = self.rfile.read(min(2**20, left))  # closed under it saw a broken pipe instead)
                if not chunk:
                    break
                left -= len(chunk)
            self.close_connection = True
            raise _BodyTooLarge(f"the request body is {length} bytes; at most {MAX_BODY_BYTES} are read")
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:  # the client stopped sending mid-body: nothing was generated, nothing to log
            self.close_connection = True
            raise UserError(f"the request body stopped arriving for {self.timeout} s") from None
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError as err:  # not UTF-8, not JSON, or a number of over 4300 digits
            raise UserError(f"the request body is not JSON: {err}") from None
        except RecursionError:  # arrays nested thousands deep: the parser's stack, not the server's fault
            raise UserError("the request body nests too deeply to be read") from None

    def _send_json(self, status: HTTPStatus, payload: Any, allow: str | None = None) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json", allow)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if status != HTTPStatus.NO_CONTENT:  # a 204 has no body and no Content-Length (RFC 9110, 8.6)
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        try:
            self.end_headers()
            if not getattr(self, "_head_only", False):
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client left (a closed tab): nobody to tell
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if not self.quiet:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    """The threading server, counting the generate requests not yet answered, so that a stopping
    `ldm serve` can let their 503s out before the process ends (request threads are daemons)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unanswered = 0
        self._count = threading.Condition()

    def answering(self) -> "_Answering":
        return _Answering(self)

    def wait_for_answers(self, timeout: float) -> bool:
        """Wait until every generate request has been answered, at most `timeout` s; whether all were."""
        deadline = time.monotonic() + timeout
        with self._count:
            while self._unanswered and (left := deadline - time.monotonic()) > 0:
                self._count.wait(left)
            return not self._unanswered


class _Answering:
    def __init__(self, server: _Server) -> None:
        self.server = server

    def __enter__(self) -> None:
        with self.server._count:
            self.server._unanswered += 1

    def __exit__(self, *exc: object) -> None:
        with self.server._count:
            self.server._unanswered -= 1
            self.server._count.notify_all()


def make_server(service: GenerationService, host: str = "127.0.0.1", port: int = 8000, *,
                runner: JobRunner | None = None, quiet: bool = False, allowed_hosts: tuple[str, ...] = ()) -> _Server:
    """A server for `service` bound to host:port (port 0: any free port; read it back from
    `server.server_address`). Run it with `serve_forever()`; `shutdown()` from another thread.
    With a `runner`, generation runs on the thread in `runner.run()` (needed for a compiled UNet
    with CUDA graphs: `jobs.py`); without, on each request's own thread."""
    handler = type("RequestHandler", (_RequestHandler,), {"service": service, "runner": runner, "quiet": quiet,
                                                          "allowed_hosts": tuple(allowed_hosts)})
    server = type("Server", (_Server,), {"address_family": address_family(host)})  # "::1" needs IPv6
    return server((host, port), handler)
