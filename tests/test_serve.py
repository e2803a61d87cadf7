"""`ldm serve`: the page, /api/info and /api/generate over real HTTP on a tiny random model; the
page's images are the ones `ldm generate` makes for the same seeds; mistakes are 400s that say
what is wrong, and the server keeps serving after them."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_class_model

from ldmkit import compiled_unet
from ldmkit.cli import main
from ldmkit.pipeline import DEFAULT_SAMPLER, LatentDiffusionPipeline
from ldmkit.serve import GenerationService, JobRunner, Limits, make_server
from ldmkit.serve import server
from ldmkit.serve.server import page_html

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_tiny_class_model(tmp_path_factory.mktemp("model") / "model.safetensors", CLASSES)


@pytest.fixture(scope="module")
def pipe(model_file) -> LatentDiffusionPipeline:
    return LatentDiffusionPipeline.from_pretrained(model_file, device="cpu")


@pytest.fixture(scope="module")
def runner_thread():
    """A JobRunner on a thread of its own, as `ldm serve` runs one on its main thread."""
    runner, stop = JobRunner(), threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    yield runner, thread
    stop.set()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def url(pipe, runner_thread):
    service = GenerationService(pipe, name="tiny", limits=Limits(max_images=6, max_steps=10))
    server = make_server(service, "127.0.0.1", 0, runner=runner_thread[0], quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def call(url: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url + path, data=body, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def generate(url: str, **fields) -> tuple[int, dict]:
    status, body = call(url, "/api/generate", json.dumps(fields).encode())
    return status, json.loads(body)


def test_page_and_info(url):
    status, page = call(url, "/")
    assert status == 200 and b"<form" in page and b"api/generate" in page
    status, body = call(url, "/api/info")
    info = json.loads(body)
    assert status == 200 and info["kind"] == "class" and info["classes"] == CLASSES
    assert info["image_size"] == 16 and "dpmpp-2m" in info["samplers"]
    assert info["limits"] == {"max_images": 6, "max_steps": 10} and info["defaults"]["n"] == 3
    assert info["defaults"]["steps"] == 10  # the default 25 capped at the limit: a request without steps works


def test_generated_images_are_ldm_generates_for_the_same_seeds(url, model_file, tmp_path):
    status, result = generate(url, n=2, **{"class": "blue"}, steps=3, seed=11, cfg=1.5)
    assert status == 200 and result["seeds"] == [11, 12] and result["classes"] == ["blue", "blue"]
    assert main(["generate", "--model", str(model_file), "--class", "blue", "--n", "2", "--steps", "3",
                 "--seed", "11", "--cfg", "1.5", "--out", str(tmp_path), "--quiet"]) == 0
    for k, (src, seed) in enumerate(zip(result["images"], result["seeds"])):
        assert src.startswith("data:image/png;base64,")
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
        written = np.asarray(Image.open(tmp_path / f"{k:05d}_seed{seed}_class2.png"))
        assert served.shape == (16, 16, 3) and np.array_equal(served, written)


def test_the_model_runs_on_the_runners_thread_not_the_requests(url, pipe, runner_thread, monkeypatch):
    threads = []
    real = pipe.generate_uint8

    def on_which_thread(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe, "generate_uint8", on_which_thread)
    assert generate(url, n=1, steps=1)[0] == 200 and generate(url, n=2, steps=1)[0] == 200
    assert threads == [runner_thread[1]] * 2


def test_job_runner_returns_results_and_raises_errors_in_the_submitting_thread():
    runner, stop = JobRunner(), threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    assert runner.submit(lambda: threading.current_thread()) is worker
    with pytest.raises(ZeroDivisionError):
        runner.submit(lambda: 1 / 0)
    assert runner.submit(lambda: "still running") == "still running"
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_without_a_class_the_images_go_round_the_classes(url):
    status, result = generate(url, n=4, steps=2, sampler="ddim")
    assert status == 200 and result["classes"] == ["red", "green", "blue", "red"] and len(result["images"]) == 4
    assert result["labels"] == [0, 1, 2, 0]  # the ids name the page's downloads: names need not be unique


@pytest.mark.parametrize("fields, message", [
    ({"n": 0}, "n must be from 1 to 6"),
    ({"n": 7}, "n must be from 1 to 6"),
    ({"n": "2"}, "n must be an integer"),
    ({"steps": 11}, "steps must be from 1 to 10"),
    ({"seed": -1}, "seed must be from 0"),
    ({"sampler": "plms"}, "unknown sampler"),
    ({"sampler": ["ddim"]}, "sampler must be a sampler name (a string), got ['ddim']"),  # was a 500
    ({"sampler": {}}, "sampler must be a sampler name"),  # these two were the default sampler
    ({"sampler": 0}, "sampler must be a sampler name"),
    ({"sampler": False}, "sampler must be a sampler name"),
    ({"class": "purple"}, "unknown class 'purple'"),
    ({"cfg": "high"}, "cfg must be a number"),
    ({"prompt": "a cat"}, "takes no prompt"),
    ({"num": 2}, "unknown field(s) num"),
])
def test_mistakes_are_400s_that_name_the_field(url, fields, message):
    status, result = generate(url, **fields)
    assert status == 400 and message in result["error"]


def test_a_null_or_empty_sampler_is_the_default(url, pipe, monkeypatch):
    used = []
    real = pipe.generate_uint8
    monkeypatch.setattr(pipe, "generate_uint8", lambda *a, **kw: used.append(kw["sampler"]) or real(*a, **kw))
    for sampler in (None, ""):
        assert generate(url, n=1, steps=1, sampler=sampler)[0] == 200
    assert used == [DEFAULT_SAMPLER] * 2


def test_bodies_json_cannot_hold_are_400s(url):
    """json.loads raises ValueError for an integer of over 4300 digits and RecursionError for
    arrays nested thousands deep: a 500 before, and /api/stop answered nothing at all."""
    for body in (b'{"n": ' + b"9" * 5000 + b"}", b"[" * 5000 + b"]" * 5000):
        for path in ("/api/generate", "/api/stop"):
            status, answer = call(url, path, body)
            assert status == 400 and "request body" in json.loads(answer)["error"], (path, body[:10])
    assert generate(url, n=1, steps=1)[0] == 200


def test_bad_bodies_and_paths(url, monkeypatch):
    monkeypatch.setattr(server, "MAX_BODY_BYTES", 64 * 1024)  # not 16 MB of spaces through a test
    status, body = call(url, "/api/generate", b"{not json")
    assert status == 400 and "not JSON" in json.loads(body)["error"]
    status, body = call(url, "/api/generate", b"[1, 2]")
    assert status == 400 and "JSON object" in json.loads(body)["error"]
    status, body = call(url, "/api/generate", b" " * (64 * 1024 + 1))
    assert status == 413
    assert call(url, "/nothing")[0] == 404 and call(url, "/api/info", b"{}")[0] == 404
    assert generate(url, n=1, steps=1)[0] == 200  # still serving


def test_a_failure_inside_generation_is_a_500_and_the_server_goes_on(url, pipe, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(pipe, "generate_uint8", broken)
    status, result = generate(url, n=1, steps=1)
    assert status == 500 and "RuntimeError" in result["error"] and "out of memory" not in result["error"]
    assert "out of memory, say" in capsys.readouterr().err  # the details stay in the server's log
    monkeypatch.undo()
    assert generate(url, n=1, steps=1)[0] == 200


def test_ldm_serve_says_when_the_port_is_taken(url, model_file, capsys):
    port = url.rsplit(":", 1)[1]
    assert main(["serve", "--model", str(model_file), "--port", port, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"port {port} is already in use" in err and len(err.strip().splitlines()) == 1


def test_every_element_the_page_script_uses_is_on_the_page():
    page = page_html().decode()
    script = page[page.index("<script>"):]
    used = set(re.findall(r'\$\("([a-z_]+)"\)', script))
    assert {"form", "go", "images", "status", "class", "prompt", "seed"} <= used
    missing = [name for name in used if f'id="{name}"' not in page]
    assert not missing, f"the script looks up ids the page lacks: {missing}"


def _browser_accepts(attributes: dict[str, str], value: float) -> bool:
    """Whether a browser submits a form holding `value` in an `<input type=number>` with these
    attributes (HTML's range and step rules: a value off `min + k * step` blocks the submit)."""
    low, high = float(attributes.get("min", "-inf")), float(attributes.get("max", "inf"))
    if not low <= value <= high:
        return False
    step = attributes.get("step", "1")
    if step == "any":
        return True
    steps = (value - (low if low > float("-inf") else 0.0)) / float(step)
    return abs(steps - round(steps)) < 1e-9


def test_the_pages_number_fields_take_the_values_a_user_types():
    """A real browser refuses to submit a number off its field's step (no request is sent): the
    guidance scale and strength must take any value in range, the defaults among them."""
    page = page_html().decode()
    fields = {m.group(1): dict(re.findall(r'(\w+)="([^"]*)"', m.group(0)))
              for m in re.finditer(r'<input id="(\w+)" type="number"[^>]*>', page)}
    assert {"n", "steps", "cfg", "seed", "strength", "brush"} <= fields.keys()
    for value in (7.5, 2.0, 1.25, 1.0, 3.33):
        assert _browser_accepts(fields["cfg"], value), f"guidance scale {value}"
    for value in (0.75, 1.0, 0.33, 0.5, 0.05):  # 0.75: the server's default; 1: with paint
        assert _browser_accepts(fields["strength"], value), f"strength {value}"
    assert not _browser_accepts(fields["strength"], 1.5)  # out of range: the browser's own message
    assert _browser_accepts(fields["n"], 40) and not _browser_accepts(fields["n"], 2.5)
    assert not _browser_accepts(fields["seed"], -1)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_script_parses(tmp_path):
    page = page_html().decode()
    script = page[page.index("<script>") + len("<script>"):page.index("</script>")]
    (tmp_path / "page.js").write_text(script)
    result = subprocess.run(["node", "--check", str(tmp_path / "page.js")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_text_to_image_model_takes_a_prompt_and_no_class(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_sd import save_sd_pipeline

    from ldmkit.errors import UserError

    text_pipe = LatentDiffusionPipeline.from_pretrained(save_sd_pipeline(tmp_path / "sd"), device="cpu")
    service = GenerationService(text_pipe, name="tiny-sd")
    info = service.describe()
    assert info["kind"] == "text" and info["classes"] == [] and info["defaults"]["cfg"] == 7.5
    result = service.generate({"prompt": "a cat", "negative_prompt": "at", "n": 1, "steps": 2, "seed": 3})
    expected = text_pipe.generate_uint8([3], [-1], steps=2, prompt="a cat", negative_prompt="at")
    served = np.asarray(Image.open(io.BytesIO(result.pngs[0])))
    assert result.classes == [None] and np.array_equal(served, expected[0].permute(1, 2, 0).numpy())
    assert result.notes == []
    # A prompt the encoder cuts is told to the page (the warning alone reached only the server's log).
    notes = service.prepare({"prompt": "a cat " * 60, "negative_prompt": "at " * 90}).notes
    assert [note.split(" is longer")[0] for note in notes] == ["the prompt", "the negative prompt"]
    assert "only 'a cat a cat" in notes[0]
    for request, message in (({"n": 1}, "give a prompt"), ({"prompt": ""}, "write a prompt"),
                             ({"prompt": "a cat", "class": 1}, "has no classes")):
        with pytest.raises(UserError, match=message):
            service.generate(request)


def test_ldm_serve_as_a_command_starts_serves_and_stops_on_ctrl_c(tmp_path):
    """benchmarks/serve_check.py runs `ldm serve` as its own process (the bundled emoji model),
    asks for images over HTTP and sends SIGINT: the command must exit 0 after saying so."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_check.py"
    out = tmp_path / "serve.json"
    done = subprocess.run([sys.executable, str(script), "--n", "2", "--steps", "2", "--repeat", "1",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["info"]["model"] == "emoji" and result["info"]["kind"] == "class"
    assert result["requests"][0]["images"] == 2 and result["requests"][0]["size"] == [64, 64]
    assert result["exit_status"] == 0 and result["last_line"] == "stopped"


@pytest.fixture
def compiled_pipe(model_file, monkeypatch) -> LatentDiffusionPipeline:
    """The pipeline as `ldm serve` runs it on CUDA (compile "on"), with dynamo's "eager" backend:
    the compiled path's batching, without inductor's minutes on a 2-core CPU."""
    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": "eager", "dynamic": False})
    return LatentDiffusionPipeline.from_pretrained(model_file, device="cpu", compile="on")


def test_compiled_serving_pads_to_powers_of_two_and_keeps_the_same_images(pipe, compiled_pipe):
    plain = GenerationService(pipe, name="tiny", limits=Limits(max_images=40))
    padded = GenerationService(compiled_pipe, name="tiny", limits=Limits(max_images=40))
    assert not plain.compiled and padded.compiled
    assert [plain.batch_size(n) for n in (1, 3, 5, 40)] == [1, 3, 5, 40]
    assert [padded.batch_size(n) for n in (1, 2, 3, 5, 17, 40)] == [1, 2, 4, 8, 32, 40]
    request = {"n": 5, "steps": 2, "seed": 7, "class": "green"}
    ours, theirs = padded.generate(request), plain.generate(request)
    assert ours.seeds == theirs.seeds == [7, 8, 9, 10, 11] and ours.classes == ["green"] * 5
    assert ours.pngs == theirs.pngs  # the 3 padding images (batch of 8) were made and dropped


def test_compiled_serving_runs_whole_batches(compiled_pipe, monkeypatch):
    sampled = []
    sample_batch = compiled_pipe.generate_latents

    def record(seeds, labels, **sampling):
        sampled.append((list(seeds), list(labels)))
        return sample_batch(seeds, labels, **sampling)

    monkeypatch.setattr(compiled_pipe, "generate_latents", record)
    result = GenerationService(compiled_pipe, name="tiny").generate({"n": 3, "steps": 1, "seed": 4})
    assert sampled == [([4, 5, 6, 6], [0, 1, 2, 2])] and len(result.pngs) == 3


def test_warm_up_runs_each_size_before_serving_and_checks_them_all_first(model_file, monkeypatch, capsys):
    import ldmkit.serve

    ran = []
    monkeypatch.setattr(GenerationService, "run", lambda self, job: ran.append(job.batch_size))

    class Serving(Exception):
        pass

    def no_server(*args, **kwargs):
        raise Serving(list(ran))

    monkeypatch.setattr(ldmkit.serve, "make_server", no_server)
    with pytest.raises(Serving) as serving:
        main(["serve", "--model", str(model_file), "--device", "cpu", "--warm-up", "2", "5"])
    assert serving.value.args[0] == [2, 5]  # both ran before the server was made
    ran.clear()
    assert main(["serve", "--model", str(model_file), "--device", "cpu", "--warm-up", "2", "99"]) == 2
    assert ran == [] and "--warm-up 99: n must be from 1 to 64" in capsys.readouterr().err


def test_warm_up_of_a_text_to_image_model_gives_it_a_prompt(tmp_path, monkeypatch):
    """--warm-up asked a text model for images without a prompt, which it refuses: SD, where a
    warm-up matters most, could not start with one."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_sd import save_sd_pipeline

    import ldmkit.serve

    folder = save_sd_pipeline(tmp_path / "sd")
    ran = []
    monkeypatch.setattr(GenerationService, "run", lambda self, job: ran.append(job.batch_size))

    class Serving(Exception):
        pass

    def no_server(*args, **kwargs):
        raise Serving()

    monkeypatch.setattr(ldmkit.serve, "make_server", no_server)
    with pytest.raises(Serving):
        main(["serve", "--model", str(folder), "--device", "cpu", "--warm-up", "1"])
    assert ran == [1]


@pytest.mark.parametrize("device, setting, expected", [
    ("cuda", "auto", "on"), ("cpu", "auto", "off"), ("cuda", "off", "off"), ("cpu", "on", "on")])
def test_serve_compiles_by_default_on_cuda_only(model_file, monkeypatch, device, setting, expected):
    """`ldm serve --compile auto` compiles on CUDA whatever a request's size (a server lives long
    enough to repay it), unlike `ldm generate`'s auto; checked here with the device patched in."""
    import ldmkit.device

    asked = []

    class Loaded(Exception):
        pass

    def from_pretrained(path, *, device, compile, **options):
        asked.append((device, compile))
        raise Loaded

    monkeypatch.setattr(ldmkit.device, "resolve_device", lambda name: torch.device(device))  # run() imports it
    monkeypatch.setattr(LatentDiffusionPipeline, "from_pretrained", from_pretrained)
    with pytest.raises(Loaded):
        main(["serve", "--model", str(model_file), "--compile", setting])
    assert asked == [(device, expected)]
