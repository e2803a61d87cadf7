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
from test_serve_shutdown import served as served_idle  # noqa: F401 (a fixture, used by name)
from tiny_models import save_tiny_class_model

from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.serve import Limits
from ldmkit.serve.origin import foreign_request


@pytest.fixture
def served(served_idle):  # noqa: F811 (pytest passes the imported fixture)
    """test_serve_shutdown's server, with its runner running and room for 500-step jobs."""
    service, runner, server, url = served_idle
    service.limits = Limits(max_images=4, max_steps=500)
    stop = threading.Event()
    threading.Thread(target=runner.run, args=(stop,), daemon=True).start()
    yield service, server, url
    stop.set()


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


def _serve(*flags: str, ignore_sigint: bool = False) -> subprocess.Popen:
    start = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen([sys.executable, "-m", "ldmkit.cli", "serve", "--device", "cpu", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=start)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_like_ctrl_c(tmp_path, stop_signal):
    model = save_tiny_class_model(tmp_path / "m.safetensors", ["a", "b"])
    # As a script's `ldm serve &` starts it: the shell sets SIGINT to be ignored (kill -INT did nothing).
    server = _serve("--model", str(model), "--port", "0", ignore_sigint=True)
    line = server.stdout.readline()
    assert line.startswith("serving"), line + server.stderr.read()
    server.send_signal(stop_signal)
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


def test_a_reverse_proxy_is_served_when_its_name_is_allowed():
    proxied = {"Host": "127.0.0.1:8765", "Origin": "https://ldm.example.com"}  # nginx's default Host
    assert "--allow-host" in foreign_request(proxied, "127.0.0.1")
    assert foreign_request(proxied, "127.0.0.1", ["ldm.example.com"]) is None
    renamed = {"Host": "ldm.example.com", "Origin": "https://ldm.example.com"}  # proxy_set_header Host $host
    assert foreign_request(renamed, "127.0.0.1") is not None
    assert foreign_request(renamed, "127.0.0.1", ["ldm.example.com"]) is None
    for name in ("ldm.localhost:8765", "0.0.0.0:8765", "[::1]:8765"):  # browsers send these to this machine
        assert foreign_request({"Host": name, "Origin": f"http://{name}"}, "127.0.0.1") is None


def test_the_announced_address_is_a_url():
    from ldmkit.cli.serve import page_address

    assert page_address("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert page_address("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert page_address("::1", 8767) == "http://[::1]:8767/"  # was http://::1:8767/
    assert page_address("::", 8768) == "http://[::1]:8768/"


def test_a_client_that_stops_sending_its_body_is_no_failure(served, capfd):
    service, server, url = served
    server.RequestHandlerClass.timeout = 0.5
    with socket.create_connection(server.server_address[:2]) as client:
        client.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{")
        client.settimeout(10)
        answer = b""
        while chunk := client.recv(4096):  # the server closes the connection after its answer
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.0 400") and "stopped arriving" in answer, answer  # was 500 + a traceback
    time.sleep(0.2)
    assert "Traceback" not in capfd.readouterr().err


def test_a_strength_that_runs_no_step_is_refused_before_it_queues(served):
    import base64
    import io

    from PIL import Image

    service, server, url = served
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "PNG")
    start = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(Exception, match="runs no step"):
        service.prepare({"n": 1, "steps": 5, "strength": 0.1, "init_image": start})
    assert raw(server, "GET", "/favicon.ico")[1].get("Content-Length") is None  # a 204 has none


def test_img2img_on_a_zero_snr_schedule_checks_the_steps_it_runs(tmp_path):
    from ldmkit.diffusion import NoiseSchedule
    from ldmkit.errors import UserError

    pipe = LatentDiffusionPipeline.from_pretrained(save_tiny_class_model(tmp_path / "m.safetensors", ["a"]),
                                                   device="cpu")
    pipe.schedule = NoiseSchedule.create("scaled_linear", zero_terminal_snr=True)  # an eps model on it
    with pytest.raises(UserError, match="zero SNR"):
        pipe.check_sampling("dpmpp-2m", 10)  # from pure noise: t = 999 first
    pipe.check_sampling("dpmpp-2m", 10, strength=0.5)  # img2img runs the lower half only


def test_a_client_still_sending_a_too_large_body_hears_413(served):
    _, _, url = served  # 20 MB: more than the socket buffers take while the server answers
    status, body = request_json(url, "/api/generate", {"n": 1, "pad": "x" * (20 * 1024 * 1024)})
    assert status == 413 and "at most 16777216 are read" in body["error"]  # urllib saw a broken pipe


def test_headers_that_are_no_host_are_refused_in_words():
    assert "loopback" in foreign_request({"Host": "[::1"}, "127.0.0.1")  # urlsplit raised ValueError
    assert "another site" in foreign_request({"Host": "127.0.0.1:1", "Origin": "http://[oops"}, "127.0.0.1")


def test_a_content_length_of_other_digits_is_a_400(served, capfd):
    """"²" is a digit to str.isdigit and not to int(): /api/stop answered nothing, with a traceback."""
    service, server, url = served
    for path in ("/api/stop", "/api/generate"):
        with socket.create_connection(server.server_address[:2]) as client:
            client.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           "Content-Length: \u00b2\r\n\r\n{}".encode("latin-1"))
            client.settimeout(10)
            answer = b""
            while chunk := client.recv(4096):
                answer += chunk
        assert answer.decode().startswith("HTTP/1.0 400") and "Content-Length" in answer.decode(), (path, answer)
    time.sleep(0.2)
    assert "Traceback" not in capfd.readouterr().err


def test_a_start_image_with_a_broken_png_chunk_is_a_one_line_refusal():
    import base64
    import io

    from PIL import Image

    from ldmkit.errors import UserError
    from ldmkit.serve.request_images import request_image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, "PNG")
    damaged = bytearray(buffer.getvalue())
    damaged[36] = 0  # the IDAT chunk's length: PIL raises SyntaxError("broken PNG file")
    encoded = base64.b64encode(bytes(damaged)).decode()
    with pytest.raises(UserError, match="init_image (is not a PNG|could not be decoded)"):
        request_image({"init_image": encoded}, "init_image", 16)
