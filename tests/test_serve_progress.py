"""`ldm serve`'s progress: a request names its job (`job_id`), and GET /api/progress?job=ID
says whether that job waits (behind how many), runs (step k of n) or is done, while the request
is still out."""

from __future__ import annotations

import base64
import io
import threading

import pytest
from PIL import Image
from serve_http import post, request_json
from tiny_models import save_tiny_class_model

from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.serve import GenerationService, JobRunner, Limits, make_server
from ldmkit.serve.progress import ProgressBoard


def test_the_board_follows_a_job_from_queued_to_done():
    board = ProgressBoard()
    board.queued("a")
    board.queued("b")
    assert board.report("a") == {"state": "queued", "ahead": 0}
    assert board.report("b") == {"state": "queued", "ahead": 1}
    board.started("a", steps=3)
    assert board.report("b") == {"state": "queued", "ahead": 1}  # a runs, so it is still ahead
    for _ in range(5):
        board.advanced("a")
    assert board.report("a") == {"state": "running", "step": 3, "steps": 3}  # never past the end
    board.finished("a")
    assert board.report("a") == {"state": "done"}
    assert board.report("b") == {"state": "queued", "ahead": 0}
    assert board.report("c") == {"state": "unknown"}
    board.queued(None)  # a request without an id is not followed
    board.advanced("c")  # nor is an unknown id made up
    assert board.report("c") == {"state": "unknown"}


def test_the_board_forgets_the_oldest_jobs():
    board = ProgressBoard(keep=3)
    for name in "abcd":
        board.finished(name)
    assert board.report("a") == {"state": "unknown"} and board.report("d") == {"state": "done"}


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> GenerationService:
    model = save_tiny_class_model(tmp_path_factory.mktemp("model") / "model.safetensors", ["red", "green"])
    pipe = LatentDiffusionPipeline.from_pretrained(model, device="cpu")
    return GenerationService(pipe, name="tiny", limits=Limits(max_images=100))


@pytest.fixture(scope="module")
def url(service):
    runner, stop = JobRunner(), threading.Event()
    threading.Thread(target=runner.run, args=(stop,), daemon=True).start()
    server = make_server(service, "127.0.0.1", 0, runner=runner, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    stop.set()


def test_a_job_reports_its_steps_and_the_one_behind_it_waits(url, service, monkeypatch):
    """Job "first" is held at its third step of four; "second", sent meanwhile, waits behind it."""
    reached, release = threading.Event(), threading.Event()
    advanced = service.progress.advanced

    def advance_and_hold(job_id):
        advanced(job_id)
        if job_id == "first" and service.progress.report(job_id)["step"] == 3:
            reached.set()
            release.wait(30)

    monkeypatch.setattr(service.progress, "advanced", advance_and_hold)
    answers = {}
    first = threading.Thread(target=lambda: answers.update(first=post(url, {"n": 2, "steps": 4, "job_id": "first"})))
    first.start()
    assert reached.wait(30)
    assert request_json(url, "/api/progress?job=first") == (200, {"state": "running", "step": 3, "steps": 4})
    second = threading.Thread(target=lambda: answers.update(second=post(url, {"n": 1, "steps": 2,
                                                                             "job_id": "second"})))
    second.start()
    for _ in range(200):  # until the second request has been checked and queued
        if request_json(url, "/api/progress?job=second")[1]["state"] != "unknown":
            break
        threading.Event().wait(0.01)
    assert request_json(url, "/api/progress?job=second") == (200, {"state": "queued", "ahead": 1})
    release.set()
    first.join(30)
    second.join(30)
    assert answers["first"][0] == 200 and len(answers["first"][1]["images"]) == 2
    assert answers["second"][0] == 200
    assert request_json(url, "/api/progress?job=first") == (200, {"state": "done"})
    assert request_json(url, "/api/progress?job=second") == (200, {"state": "done"})


def test_the_steps_counted_are_the_steps_that_run(service):
    """img2img runs int(steps * strength) of them; each batch runs its own."""
    assert service.prepare({"n": 3, "steps": 7, "job_id": "x"}).total_steps == 7
    assert service.prepare({"n": 70, "steps": 7}).total_steps == 14  # batches of 64 and 6
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    start = base64.b64encode(buffer.getvalue()).decode("ascii")
    assert service.prepare({"n": 3, "steps": 8, "init_image": start, "strength": 0.5}).total_steps == 4


def test_progress_mistakes(url):
    assert request_json(url, "/api/progress?job=nobody") == (200, {"state": "unknown"})
    status, answer = request_json(url, "/api/progress")
    assert status == 400 and "/api/progress?job=ID" in answer["error"]
    for bad in ("", "x" * 65, "a b", 7):
        status, answer = post(url, {"n": 1, "steps": 1, "job_id": bad})
        assert status == 400 and "job_id must be" in answer["error"], bad
