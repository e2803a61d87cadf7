"""`ldm serve` against what a user-tester found: a stopped queued job answered at once, other
sites' pages refused, methods answered in JSON, SIGTERM stopping like Ctrl-C, and refusals
(a port in use, a text model without its encoder) before the model loads or serves."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from serve_http import post, request_json
from tiny_models import save_tiny_class_model

from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.serve import GenerationService, JobRunner, Limits, make_server
from ldmkit.serve.origin import foreign_request


@pytest.fixture
def served(tmp_path):
    pipe = LatentDiffusionPipeline.from_pretrained(save_tiny_class_model(tmp_path / "m.safetensors", ["a", "b"]),
                                                   device="cpu")
    service = GenerationService(pipe, name="tiny", limits=Limits(max_images=4, max_steps=500))
    runner = JobRunner()
    server = make_server(service, "127.0.0.1", 0, runner=runner, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=runner.run, args=(stop,), daemon=True).start()
    yield service, server, f"http://127.0.0.1:{server.server_address[1]}"
    stop.set()
    server.shutdown()
    server.server_close()


def raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_a_job_stopped_while_it_waits_is_answered_at_once(served):
    service, server, url = served
    real_advanced = service.progress.advanced

    def slow_step(job_id):
        time.sleep(0.01)  # the job ahead: 500 steps, 5 s
        return real_advanced(job_id)

    service.progress.advanced = slow_step
    ahead = threading.Thread(target=post, args=(url, {"n": 1, "steps": 500, "job_id": "ahead"}))
    ahead.start()
    while service.progress.report("ahead").get("state") != "running":
        time.sleep(0.01)
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(post(url, {"n": 1, "steps": 2, "job_id": "behind"})))
    waiting.start()
    while service.progress.report("behind").get("state") != "queued":
        time.sleep(0.01)
    asked = time.monotonic()
    assert request_json(url, "/api/stop", {"job_id": "behind"}) == (200, {"stopped": True})
    waiting.join(3)
    assert answers and answers[0][0] == 409 and answers[0][1]["error"] == "stopped before it started"
    assert time.monotonic() - asked < 2 and service.progress.report("ahead")["state"] == "running"
    assert service.progress.report("behind")["state"] == "stopped"
    request_json(url, "/api/stop", {"job_id": "ahead"})
    ahead.join(30)
    assert post(url, {"n": 1, "steps": 1})[0] == 200  # the runner skipped the cancelled job and goes on


def test_other_sites_pages_are_refused():
    assert foreign_request({"Host": "127.0.0.1:8000"}, "127.0.0.1") is None  # curl, Python
    assert foreign_request({"Host": "localhost:8000", "Origin": "http://localhost:8000"}, "127.0.0.1") is None
    assert "Origin http://evil.example" in foreign_request(
        {"Host": "127.0.0.1:8000", "Origin": "http://evil.example"}, "127.0.0.1")
    assert "loopback" in foreign_request({"Host": "evil.example:8000"}, "127.0.0.1")  # DNS rebinding
    assert foreign_request({"Host": "box.lan:8000"}, "0.0.0.0") is None  # served to a LAN on purpose


def test_a_cross_site_post_does_not_generate(served):
    service, server, url = served
    status, _, body = raw(server, "POST", "/api/generate", b'{"n": 1, "steps": 1, "job_id": "x1"}',
                          {"Content-Type": "text/plain", "Origin": "http://127.0.0.1:1"})
    assert status == 403 and "another site" in json.loads(body)["error"]
    assert service.progress.report("x1")["state"] == "unknown"


def test_methods_are_answered_in_json(served):
    _, server, _ = served
    status, headers, body = raw(server, "PUT", "/api/generate", b"{}")
    assert status == 405 and "POST /api/generate" in json.loads(body)["error"] and "POST" in headers["Allow"]
    status, headers, body = raw(server, "GET", "/api/generate")
    assert status == 405 and json.loads(body)["error"] == "/api/generate takes POST" and headers["Allow"] == "POST"
    status, headers, body = raw(server, "HEAD", "/api/info")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert raw(server, "GET", "/favicon.ico")[0] == 204


def _serve(*flags: str, timeout: float = 120) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ldmkit.cli", "serve", "--device", "cpu", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_stops_like_ctrl_c(tmp_path):
    model = save_tiny_class_model(tmp_path / "m.safetensors", ["a", "b"])
    server = _serve("--model", str(model), "--port", "0")
    line = server.stdout.readline()
    assert line.startswith("serving"), line + server.stderr.read()
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0 and out.strip().endswith("stopped") and "Traceback" not in err, err


def test_a_port_in_use_is_refused_before_the_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "ldmkit.cli", "serve", "--model", str(tmp_path / "none"),
                               "--port", str(port)], capture_output=True, text=True, timeout=120)
    # The model does not exist: had it been loaded first, that would have been the error.
    assert done.returncode == 2 and f"port {port} is already in use" in done.stderr, done.stderr


def test_a_text_model_without_its_encoder_is_refused_at_start(tmp_path):
    from tiny_sd import save_sd_pipeline

    folder = save_sd_pipeline(tmp_path / "sd", text_encoder=False)
    done = subprocess.run([sys.executable, "-m", "ldmkit.cli", "serve", "--model", str(folder), "--port", "0",
                           "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "needs a CLIP text encoder" in done.stderr, done.stderr
