"""`ldm serve` stopped with requests in flight, and clients that leave early (a user-testing
report): the running and the queued requests are answered 503, "shutting down", not a 500 with a
traceback in the log and an empty reply; a client gone before its answer is no error."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from serve_http import post
from tiny_models import save_tiny_class_model

from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.serve import GenerationService, JobRunner, Limits, make_server
from ldmkit.serve.jobs import ServerStopping


def test_a_stop_answers_the_running_job_and_the_queued_ones_and_refuses_new_ones():
    runner, started, results = JobRunner(), threading.Event(), {}

    def interrupted():  # what Ctrl-C does to the job running on the main thread
        started.set()
        time.sleep(0.3)  # the second job queues meanwhile
        raise KeyboardInterrupt

    def run_until_interrupted():
        with pytest.raises(KeyboardInterrupt):
            runner.run()

    def submit(name, work):
        try:
            results[name] = runner.submit(work)
        except ServerStopping as err:
            results[name] = err

    main = threading.Thread(target=run_until_interrupted)
    main.start()
    first = threading.Thread(target=submit, args=("running", interrupted))
    first.start()
    started.wait(10)
    second = threading.Thread(target=submit, args=("queued", lambda: "ran"))
    second.start()
    for thread in (main, first, second):
        thread.join(10)
        assert not thread.is_alive()  # the queued request no longer waits forever
    assert isinstance(results["running"], ServerStopping) and isinstance(results["queued"], ServerStopping)
    with pytest.raises(ServerStopping, match="the server is shutting down"):
        runner.submit(lambda: "too late")


@pytest.fixture
def served(tmp_path):
    pipe = LatentDiffusionPipeline.from_pretrained(save_tiny_class_model(tmp_path / "m.safetensors", ["a", "b"]),
                                                   device="cpu")
    service = GenerationService(pipe, name="tiny", limits=Limits(max_images=4, max_steps=4))
    runner = JobRunner()
    server = make_server(service, "127.0.0.1", 0, runner=runner, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield service, runner, server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_requests_in_flight_at_a_stop_are_answered_503(served, capfd):
    service, runner, server, url = served
    real_run, running = service.run, threading.Event()

    def slow_then_stopped(job):
        running.set()
        time.sleep(0.5)
        raise KeyboardInterrupt  # Ctrl-C during the job

    service.run = slow_then_stopped
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(post(url, {"n": 1, "steps": 1}))) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while runner._jobs.qsize() < 2 and time.monotonic() < deadline:  # both queued, then the runner starts
        time.sleep(0.01)
    with pytest.raises(KeyboardInterrupt):
        runner.run()  # here, as on `ldm serve`'s main thread: the first job runs, the second waits
    assert running.is_set()
    server.shutdown()
    assert server.wait_for_answers(timeout=5)
    for thread in threads:
        thread.join(10)
    assert [status for status, _ in answers] == [503, 503]
    assert all("the server is shutting down" in body["error"] for _, body in answers)
    assert "Traceback" not in capfd.readouterr().err
    service.run = real_run


def test_a_client_that_left_before_its_answer_is_no_error(served, capfd):
    service, runner, server, url = served
    worker = threading.Thread(target=runner.run, args=(stop := threading.Event(),), daemon=True)
    worker.start()
    real_run = service.run

    def slow(job):
        time.sleep(0.5)
        return real_run(job)

    service.run = slow
    body = b'{"n": 1, "steps": 1}'
    client = socket.create_connection(server.server_address[:2])
    client.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(0.1)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    client.close()
    time.sleep(0.1)
    assert server.wait_for_answers(timeout=10)
    time.sleep(0.3)  # socketserver prints a handler's exception after the handler has left
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err
    assert post(url, {"n": 1, "steps": 1})[0] == 200  # and it goes on serving
    stop.set()
    worker.join(10)


def test_the_job_of_a_client_that_left_is_stopped(served):
    """A closed tab's job ran to its end while the requests behind it waited."""
    service, runner, server, url = served
    service.limits = Limits(max_images=4, max_steps=500)
    worker = threading.Thread(target=runner.run, args=(stop := threading.Event(),), daemon=True)
    worker.start()
    real_advanced, steps = service.progress.advanced, []

    def slow_step(job_id):
        steps.append(job_id)
        time.sleep(0.01)  # 500 steps: 5 s, unless stopped
        return real_advanced(job_id)

    service.progress.advanced = slow_step
    body = b'{"n": 1, "steps": 500}'
    client = socket.create_connection(server.server_address[:2])
    client.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.monotonic() + 10
    while not steps and time.monotonic() < deadline:
        time.sleep(0.01)
    client.close()
    assert server.wait_for_answers(timeout=10)
    job_id = steps[0]
    assert job_id.startswith("#") and service.progress.report(job_id)["state"] == "stopped"
    assert len(steps) < 400
    assert post(url, {"n": 1, "steps": 1})[0] == 200
    stop.set()
    worker.join(10)


def test_a_private_job_id_is_nobodys_to_stop_or_watch(served):
    """Unnamed jobs get "#N" ids, numbered in order: any client could stop another's job by guessing."""
    from serve_http import request_json

    service, runner, server, url = served
    status, body = request_json(url, "/api/stop", {"job_id": "#1"})
    assert status == 400 and "job_id" in body["error"]
    assert request_json(url, "/api/progress?job=%231")[0] == 400
