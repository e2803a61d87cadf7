"""`ldm train --time-limit`: the run stops at its deadline and leaves a usable model."""
from __future__ import annotations

import time

from ldmkit.train import load_inference_file, run_training
from ldmkit.train.signals import StopSignal
from test_train_e2e import micro_config, write_color_dataset


def test_a_passed_deadline_counts_as_a_stop_request():
    stop = StopSignal(deadline=time.monotonic() + 3600)
    assert not stop.requested
    stop.deadline = time.monotonic() - 1
    assert stop.requested and stop.signal_name == "the time limit"
    assert not StopSignal().requested  # no deadline: never by itself


def test_time_limit_ends_the_diffusion_stage_early_with_a_model(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=4, size=8)
    config = micro_config(data, vae_steps=2, steps=10**6)
    config.time_limit = 0.25  # minutes: the VAE's 2 steps fit, a million UNet steps do not
    config.diffusion.sample_every = 10**9  # no periodic grid: only the last step's
    config.diffusion.sample_per_class = 1
    started = time.monotonic()
    run = run_training(config, tmp_path / "run")
    assert time.monotonic() - started < 120
    _, _, meta = load_inference_file(run, "cpu")
    assert 0 < meta["step"] < 10**6
    assert "time limit" in (run / "log.jsonl").read_text()
    # The stop is the run's last step: it gets its sample grid like a finished run.
    assert (run / "samples" / f"step_{meta['step']:06d}.png").is_file()
