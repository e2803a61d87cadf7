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
from ldmkit.serve.progress import JobIdInUse, JobStopped, ProgressBoard


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
    assert board.report("a") == {"state": "running", "step": 3, "steps": 3, "batches": 1}  # never past the end
    board.finished("a")
    assert board.report("a") == {"state": "done"}
    assert board.report("b") == {"state": "queued", "ahead": 0}
    assert board.report("c") == {"state": "unknown"}
    board.queued(None)  # a request without an id is not followed
    board.advanced("c")  # nor is an unknown id made up
    assert board.report("c") == {"state": "unknown"}


def test_the_board_stops_a_job_at_its_next_step_or_before_it_starts():
    board = ProgressBoard()
    board.queued("a")
    board.queued("b")
    board.started("a", steps=4)
    board.advanced("a")
    assert board.stop("a") and board.stop("b") and not board.stop("a") and not board.stop("c")
    assert board.report("a") == {"state": "running", "step": 1, "steps": 4, "batches": 1, "stopping": True}
    assert board.report("b") == {"state": "queued", "ahead": 1, "stopping": True}
    with pytest.raises(JobStopped, match="stopped at step 2 of 4"):
        board.advanced("a")
    board.finished("a", stopped=True)
    with pytest.raises(JobStopped, match="before it started"):
        board.started("b", steps=2)
    board.finished("b", stopped=True)
    assert board.report("a") == board.report("b") == {"state": "stopped"}
    assert not board.stop("a")  # over


def test_the_board_forgets_the_oldest_jobs():
    board = ProgressBoard(keep=3)
    for name in "abcd":
        board.finished(name)
    assert board.report("a") == {"state": "unknown"} and board.report("d") == {"state": "done"}


def test_an_id_names_one_job_at_a_time_and_is_free_once_it_is_over():
    board = ProgressBoard()
    board.queued("a")
    with pytest.raises(JobIdInUse, match="job_id 'a' is in use by a queued job"):
        board.queued("a")
    board.started("a", steps=2)
    assert board.stop("a")
    with pytest.raises(JobIdInUse, match="in use by a running job"):
        board.queued("a")
    assert board.report("a") == {"state": "running", "step": 0, "steps": 2, "batches": 1,
                                   "stopping": True}  # flag kept
    board.finished("a", stopped=True)
    board.queued("a")  # stopped: the id is free, and the new job does not inherit the old stop
    assert board.report("a") == {"state": "queued", "ahead": 0}
    board.started("a", steps=1)
    board.finished("a")
    board.queued("a")  # done: free as well
    assert board.report("a")["state"] == "queued"


def test_the_board_never_forgets_a_waiting_or_running_job():
    board = ProgressBoard(keep=2)
    board.queued("waits")
    board.queued("runs")
    board.started("runs", steps=3)
    for name in "abc":
        board.finished(name)
    assert board.report("waits")["state"] == "queued" and board.report("runs")["state"] == "running"
    assert board.report("a") == {"state": "unknown"}  # the oldest finished one goes, the last two stay
    assert board.report("b") == board.report("c") == {"state": "done"} and board.stop("waits")


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


def hold(service, monkeypatch, job_id: str, step: int) -> tuple[threading.Event, threading.Event]:
    """Hold `job_id` in its runner thread once `step` steps are done: (reached, release)."""
    reached, release = threading.Event(), threading.Event()
    advanced = service.progress.advanced

    def advance_and_hold(this_job):
        advanced(this_job)
        if this_job == job_id and service.progress.report(this_job).get("step") == step:
            reached.set()
            release.wait(30)

    monkeypatch.setattr(service.progress, "advanced", advance_and_hold)
    return reached, release


def send(url: str, answers: dict, fields: dict) -> threading.Thread:
    """POST `fields` on a thread of its own; its answer lands in answers[job_id]."""
    thread = threading.Thread(target=lambda: answers.update({fields["job_id"]: post(url, fields)}))
    thread.start()
    return thread


def until_queued(url: str, job_id: str) -> None:
    for _ in range(500):  # until the request has been checked and its job queued
        if request_json(url, f"/api/progress?job={job_id}")[1]["state"] != "unknown":
            return
        threading.Event().wait(0.01)


def test_a_job_reports_its_steps_and_the_one_behind_it_waits(url, service, monkeypatch):
    """Job "first" is held at its third step of four; "second", sent meanwhile, waits behind it."""
    reached, release = hold(service, monkeypatch, "first", 3)
    answers: dict = {}
    first = send(url, answers, {"n": 2, "steps": 4, "job_id": "first"})
    assert reached.wait(30)
    assert request_json(url, "/api/progress?job=first") == (200, {"state": "running", "step": 3, "steps": 4,
                                                                       "batches": 1})
    second = send(url, answers, {"n": 1, "steps": 2, "job_id": "second"})
    until_queued(url, "second")
    assert request_json(url, "/api/progress?job=second") == (200, {"state": "queued", "ahead": 1})
    release.set()
    first.join(30)
    second.join(30)
    assert answers["first"][0] == 200 and len(answers["first"][1]["images"]) == 2
    assert answers["second"][0] == 200
    assert request_json(url, "/api/progress?job=first") == (200, {"state": "done"})
    assert request_json(url, "/api/progress?job=second") == (200, {"state": "done"})


def test_a_running_job_and_a_waiting_one_can_be_stopped(url, service, monkeypatch):
    reached, release = hold(service, monkeypatch, "long", 2)
    answers: dict = {}
    long = send(url, answers, {"n": 2, "steps": 6, "job_id": "long"})
    assert reached.wait(30)
    waiting = send(url, answers, {"n": 1, "steps": 2, "job_id": "waiting"})
    until_queued(url, "waiting")
    assert request_json(url, "/api/stop", {"job_id": "long"}) == (200, {"stopped": True})
    assert request_json(url, "/api/stop", {"job_id": "waiting"}) == (200, {"stopped": True})
    assert request_json(url, "/api/stop", {"job_id": "long"}) == (200, {"stopped": False})  # asked already
    assert request_json(url, "/api/progress?job=long")[1] == {"state": "running", "step": 2, "steps": 6,
                                                               "batches": 1, "stopping": True}
    release.set()
    long.join(30)
    waiting.join(30)
    assert answers["long"] == (409, {"error": "stopped at step 3 of 6", "stopped": True})  # at its next step
    assert answers["waiting"][0] == 409 and "before it started" in answers["waiting"][1]["error"]
    assert request_json(url, "/api/progress?job=long") == (200, {"state": "stopped"})
    assert request_json(url, "/api/stop", {"job_id": "long"}) == (200, {"stopped": False})  # over
    assert post(url, {"n": 1, "steps": 1})[0] == 200  # the server goes on


def test_stop_mistakes(url):
    assert request_json(url, "/api/stop", {"job_id": "nobody"}) == (200, {"stopped": False})
    for body in ({}, {"job_id": 3}, {"job_id": ""}, [1]):
        status, answer = request_json(url, "/api/stop", body)
        assert status == 400 and "job_id" in answer["error"], body


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


def test_a_second_job_with_the_id_of_a_running_one_is_refused(url, service, monkeypatch):
    """The user-testing report: a second "dup" made the running one read as queued, and a stop
    answered true was lost by both. Now the second is a 409 before it queues, the first stops."""
    reached, release = hold(service, monkeypatch, "dup", 1)
    answers: dict = {}
    first = send(url, answers, {"n": 1, "steps": 4, "job_id": "dup"})
    assert reached.wait(30)
    status, answer = post(url, {"n": 1, "steps": 4, "job_id": "dup"})
    assert status == 409 and answer == {"error": "job_id 'dup' is in use by a running job: send another id "
                                                 "(an id is free again once its job is done or stopped)"}
    assert request_json(url, "/api/progress?job=dup") == (200, {"state": "running", "step": 1, "steps": 4,
                                                                     "batches": 1})
    assert request_json(url, "/api/stop", {"job_id": "dup"}) == (200, {"stopped": True})
    release.set()
    first.join(30)
    assert answers["dup"] == (409, {"error": "stopped at step 2 of 4", "stopped": True})
    assert post(url, {"n": 1, "steps": 2, "job_id": "dup"})[0] == 200  # over: the id may be used again
    assert request_json(url, "/api/progress?job=dup") == (200, {"state": "done"})


def test_generate_in_process_refuses_an_id_in_use_too(service):
    service.progress.queued("taken")
    try:
        with pytest.raises(JobIdInUse):
            service.generate({"n": 1, "steps": 1, "job_id": "taken"})
    finally:
        service.progress.finished("taken")
    assert len(service.generate({"n": 1, "steps": 1, "job_id": "taken"}).pngs) == 1
