"""StopSignal's rules for repeated signals: a second Ctrl-C quits without saving, except the copy
of the same Ctrl-C that torchrun forwards to its workers, which must not skip the save."""
from __future__ import annotations

import os
import signal

import pytest

from ldmkit.train import load_inference_file, load_training_state
from ldmkit.train.signals import StopSignal
from ldmkit.train.step_guard import StepGuard
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)
from test_train_run_stops import ldm_train


def test_a_second_ctrl_c_quits_at_once():
    stop = StopSignal(under_torchrun=False)
    stop._handle(signal.SIGINT, None)
    assert stop.requested and stop.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_under_torchrun_the_forwarded_copy_is_the_same_ctrl_c():
    stop = StopSignal(under_torchrun=True)
    stop._handle(signal.SIGINT, None)
    stop._handle(signal.SIGINT, None)  # torchrun's copy, milliseconds later: no KeyboardInterrupt
    assert stop.requested
    stop._first_sigint -= StopSignal.TORCHRUN_ECHO_S  # the user's own second Ctrl-C, later
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_ctrl_c_after_sigterm_quits_and_repeated_sigterm_does_not():
    for under_torchrun in (False, True):
        stop = StopSignal(under_torchrun=under_torchrun)
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGTERM, None)  # a scheduler's group kill reaches a worker twice
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)


def test_torchrun_is_read_from_its_environment(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not StopSignal().under_torchrun
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert StopSignal().under_torchrun


def test_the_first_signal_is_announced_once(capfd):
    stop = StopSignal(announce=True, under_torchrun=False)
    stop._handle(signal.SIGINT, None)
    err = capfd.readouterr().err
    assert err.count("SIGINT: stopping; a checkpoint is saved first") == 1 and "Ctrl-C again" in err
    stop = StopSignal(announce=True, under_torchrun=True)  # torchrun sends a second Ctrl-C on as SIGTERM
    stop._handle(signal.SIGINT, None)
    stop._handle(signal.SIGINT, None)
    err = capfd.readouterr().err
    assert err.count("SIGINT: stopping; a checkpoint is saved first") == 1 and "Ctrl-C again" not in err
    quiet = StopSignal(under_torchrun=True)  # another torchrun rank: rank 0 says it
    quiet._handle(signal.SIGTERM, None)
    assert capfd.readouterr().err == ""


def test_ctrl_c_twice_under_torchrun_still_saves(tmp_path, monkeypatch, capfd):
    """A real run, its own handlers: two SIGINTs at once (the terminal's and torchrun's copy)."""
    data = write_color_dataset(tmp_path / "data", per_class=6, size=8)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    real_record, calls = StepGuard.record, {"n": 0}

    def record(self, row):
        calls["n"] += 1
        if calls["n"] == 3:  # the 2nd diffusion step, after the VAE's one
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_record(self, row)

    monkeypatch.setattr(StepGuard, "record", record)
    run = tmp_path / "run"
    assert ldm_train(monkeypatch, run, micro_config(str(data), vae_steps=1, steps=1000)) == 130
    err = capfd.readouterr().err
    assert "stopped by SIGINT at step 2; checkpoint saved" in err
    assert load_training_state(run / "checkpoint.pt")["step"] == load_inference_file(run)[2]["step"] == 2
