"""How `ldm train` ends when it is stopped: its exit status (130 after Ctrl-C, 143 after SIGTERM, 0 at
--time-limit), and a prompt stop while it encodes the latent cache.

The signals are real ones, sent by the test process to itself at a chosen moment (after some
optimizer steps, after an encoding batch), so they go through the run's own handlers.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ldmkit.cli import main
from ldmkit.cli import train as train_verb
from ldmkit.train import latent_cache, load_inference_file, load_training_state
from ldmkit.train.run_outcome import RunOutcome, agreed_stop
from ldmkit.train.step_guard import StepGuard
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)

VAE_STEPS = 1


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_color_dataset(tmp_path_factory.mktemp("data"), per_class=6, size=8)


def ldm_train(monkeypatch, run: Path, config) -> int:
    """`ldm train --out RUN` in this process, with `config` (tiny models) for what the flags make."""
    monkeypatch.setattr(train_verb, "config_from_args", lambda args: config)
    return main(["train", "--data", config.data, "--out", str(run)])


def signal_after_steps(monkeypatch, steps: int, signum: int) -> None:
    """Send `signum` to this process after `steps` optimizer steps (StepGuard.record: once a step)."""
    real_record, calls = StepGuard.record, {"n": 0}

    def record(self, row):
        calls["n"] += 1
        if calls["n"] == steps:
            os.kill(os.getpid(), signum)
        return real_record(self, row)

    monkeypatch.setattr(StepGuard, "record", record)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_stop_by_a_signal_exits_128_plus_its_number(data, tmp_path, monkeypatch, capsys, signum, status):
    run = tmp_path / "run"
    signal_after_steps(monkeypatch, VAE_STEPS + 2, signum)  # the 2nd diffusion step
    assert ldm_train(monkeypatch, run, micro_config(data, vae_steps=VAE_STEPS, steps=1000)) == status
    assert f"stopped by {signal.Signals(signum).name} at step 2; checkpoint saved" in capsys.readouterr().err
    assert load_training_state(run / "checkpoint.pt")["step"] == load_inference_file(run)[2]["step"] == 2
    # a planned stop at --time-limit is a normal end; the resume from it too
    monkeypatch.undo()
    config = micro_config(data, vae_steps=VAE_STEPS, steps=1000)
    config.time_limit = 1e-6  # minutes: reached before the first step
    assert ldm_train(monkeypatch, run, config) == 0
    assert "stopped by the time limit" in capsys.readouterr().err
    assert ldm_train(monkeypatch, run, micro_config(data, vae_steps=VAE_STEPS, steps=4)) == 0


def test_the_ranks_agree_on_what_stopped_them(monkeypatch):
    from ldmkit.train import run_outcome

    def ranks_say(*names):
        monkeypatch.setattr(run_outcome, "gather_objects", lambda name, dist: list(names))
        return RunOutcome(Path("run"), agreed_stop(names[0], None)).exit_status  # type: ignore[arg-type]

    assert ranks_say("the time limit", "a signal on another rank") == 0
    assert ranks_say("a signal on another rank", "SIGTERM") == 143
    assert ranks_say("SIGTERM", "SIGINT") == 130
    assert ranks_say("a signal on another rank", "the time limit") == 0


def test_ctrl_c_while_encoding_stops_before_the_next_batch(data, tmp_path, monkeypatch, capsys):
    config = micro_config(data, vae_steps=VAE_STEPS, steps=3)
    config.vae.batch_size = 2  # the cache's encoding batches: 12 of the 24 images' pairs
    real_batches, encoded = latent_cache.ordered_batches, []

    def batches(*args, **kwargs):
        for batch in real_batches(*args, **kwargs):
            encoded.append(batch)
            if len(encoded) == 1:
                os.kill(os.getpid(), signal.SIGINT)  # as the first batch goes to be encoded
            yield batch

    monkeypatch.setattr(latent_cache, "ordered_batches", batches)
    run = tmp_path / "run"
    assert ldm_train(monkeypatch, run, config) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT before the diffusion stage; the VAE is saved, run the same command again" in err
    assert len(encoded) == 1, "stopped at the next batch"
    state = load_training_state(run / "checkpoint.pt")
    assert (state["stage"], state["complete"]) == ("vae", True), "no diffusion step"
    assert not (run / "latents.safetensors").exists() and not (run / "model.safetensors").exists()

    monkeypatch.undo()
    assert ldm_train(monkeypatch, run, micro_config(data, vae_steps=VAE_STEPS, steps=3)) == 0
    assert load_inference_file(run)[2]["step"] == 3


def test_ctrl_c_during_the_last_sample_grid_skips_it_and_exits_130(data, tmp_path, monkeypatch, capsys):
    """The grid ran on for tens of seconds after "stopping", then the run exited 0 as if no Ctrl-C had come."""
    from ldmkit.train import previews

    real_sample, grids = previews.sample, []

    def sample(*args, **kwargs):
        grids.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # as the grid starts: its first sampler step ends it
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(previews, "sample", sample)
    config = micro_config(data, vae_steps=VAE_STEPS, steps=3)
    config.diffusion.sample_every = 1000  # the last step's grid is the only one
    run = tmp_path / "run"
    assert ldm_train(monkeypatch, run, config) == 130
    err = capsys.readouterr().err
    assert "step 3's sample grid skipped after SIGINT" in err
    assert "SIGINT after the last step (3): the diffusion stage is complete, its checkpoint and model saved" in err
    assert grids == [1] and not list((run / "samples").glob("step_*.png"))
    assert load_training_state(run / "checkpoint.pt")["step"] == load_inference_file(run)[2]["step"] == 3


def test_ctrl_c_while_encoding_with_a_given_vae_claims_no_saved_vae(data, tmp_path, monkeypatch, capsys):
    """With --vae the run trains no VAE: "the VAE is saved" named a file it had never written."""
    from ldmkit.train import apply_overrides

    vae_run = tmp_path / "vae"
    assert ldm_train(monkeypatch, vae_run, apply_overrides(micro_config(data, vae_steps=VAE_STEPS, steps=1),
                                                           {"stage": "vae"})) == 0
    monkeypatch.undo()
    real_batches = latent_cache.ordered_batches

    def batches(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        yield from real_batches(*args, **kwargs)

    monkeypatch.setattr(latent_cache, "ordered_batches", batches)
    config = micro_config(data, vae_steps=VAE_STEPS, steps=3)
    config.vae_path = str(vae_run / "vae.safetensors")
    run = tmp_path / "run"
    assert ldm_train(monkeypatch, run, config) == 130
    assert "stopped by SIGINT before the diffusion stage; nothing trained yet, run the same command" in (
        capsys.readouterr().err)
    assert not (run / "vae.safetensors").exists()
