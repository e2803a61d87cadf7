"""`ldm generate` writes a batch's PNGs on worker threads while the next batch is sampled; an
interrupt finishes the writes already handed over and counts exactly the files in place; the
first failed write stops the job and drops the writes not yet started."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from test_generate_cli import interrupt_after_batches
from tiny_models import save_tiny_class_model

from ldmkit.cli import main
from ldmkit.cli.background_writes import THREADS_VARIABLE, BackgroundWrites, writer_threads
from ldmkit.errors import UserError
from ldmkit.pipeline import LatentDiffusionPipeline


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_tiny_class_model(tmp_path_factory.mktemp("model") / "model.safetensors", ["red", "green", "blue"])


def generate(model_file: Path, out: Path, *flags: str) -> int:
    return main(["generate", "--model", str(model_file), "--n", "6", "--steps", "2", "--batch-size", "2",
                 "--device", "cpu", "--quiet", "--out", str(out), *flags])


def test_a_batch_is_written_while_the_next_is_sampled(model_file, tmp_path, monkeypatch):
    """The first image's write waits until the second batch's sampling has begun: written in the
    sampling thread, it would wait in vain (and the job fail)."""
    from ldmkit.data.images import save_png

    second_batch_started = threading.Event()
    batches = []
    real_latents = LatentDiffusionPipeline.generate_latents

    def recorded(self, seeds, labels, **sampling):
        batches.append(list(seeds))
        if len(batches) == 2:
            second_batch_started.set()
        return real_latents(self, seeds, labels, **sampling)

    def waits_for_the_next_batch(image, path, **options):
        if path.name.startswith("00000_") and not second_batch_started.wait(timeout=20):
            raise OSError(5, "the second batch never started while this image was being written")
        return save_png(image, path, **options)

    monkeypatch.setattr(LatentDiffusionPipeline, "generate_latents", recorded)
    monkeypatch.setattr("ldmkit.data.images.save_png", waits_for_the_next_batch)
    assert generate(model_file, tmp_path / "out") == 0
    assert len(list((tmp_path / "out").glob("0*.png"))) == 6 and len(batches) == 3


def test_an_interrupt_finishes_the_writes_handed_over_and_counts_them(model_file, tmp_path, monkeypatch, capsys):
    """Slow writes are still running when Ctrl-C comes during the third batch: the four images of
    the first two batches are written, and the message counts four."""
    from ldmkit.data.images import save_png

    def slow(image, path, **options):
        time.sleep(0.3)
        return save_png(image, path, **options)

    monkeypatch.setattr("ldmkit.data.images.save_png", slow)
    interrupt_after_batches(monkeypatch, 2)
    assert generate(model_file, tmp_path / "cut") == 130
    assert "interrupted: 4 of 6 images written" in capsys.readouterr().err
    assert len(list((tmp_path / "cut").glob("0*.png"))) == 4
    assert not list((tmp_path / "cut").glob(".*.tmp"))


def test_the_first_failed_write_stops_the_writes_not_yet_started(tmp_path):
    started, release = [], threading.Event()

    def write(item, path):
        started.append(item)
        if item == 0:
            release.wait(timeout=20)
            raise UserError(f"cannot write {path}: No space left on device")

    with pytest.raises(UserError, match="No space left"):
        with BackgroundWrites(write, threads=1) as writes:
            for k in range(5):
                writes.put(k, tmp_path / f"{k}.png")
            release.set()
            writes.finish()
    assert started == [0]  # one thread: 1-4 were queued behind the failure and never ran
    assert writes.written == 0


def test_finish_counts_every_write(tmp_path):
    with BackgroundWrites(lambda item, path: path.write_text(str(item)), threads=3) as writes:
        for k in range(10):
            writes.put(k, tmp_path / f"{k}.txt")
            writes.wait_for(4)
        assert writes.finish() == 10
    assert sorted(int(path.read_text()) for path in tmp_path.glob("*.txt")) == list(range(10))


@pytest.mark.parametrize("value, expected", [("", 4), ("2", 2), (" 8 ", 8)])
def test_the_thread_count_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(THREADS_VARIABLE, value)
    assert writer_threads() == expected


@pytest.mark.parametrize("value", ["0", "-1", "65", "four"])
def test_a_bad_thread_count_is_one_line(model_file, tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv(THREADS_VARIABLE, value)
    assert generate(model_file, tmp_path / "out") == 2
    assert THREADS_VARIABLE in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_skipped_write_reports_the_failure_behind_it(tmp_path):
    """Threads end out of order: a write skipped because a later-queued one failed first is
    settled before that one, and must raise its failure, not the internal skip."""
    writes = BackgroundWrites(lambda item, path: None, threads=1)
    writes._failure = UserError("cannot write 7.png: No space left on device")  # as a worker records it
    with pytest.raises(UserError, match="7.png: No space left"):
        with writes:
            writes.put(0, tmp_path / "0.png")
            writes.finish()
    assert writes.written == 0
