"""What `ldm train` tells in words: its --help (exit statuses, what --time-limit saves, which stage
--batch-size sets) and the one line for a checkpoint that cannot be read."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.train.checkpoint import load_training_state, save_training_state


def help_text(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse's line breaks undone


def test_help_tells_the_exit_statuses_and_what_each_flag_covers(capsys):
    text = help_text(capsys)
    assert ("Exit status: 0 when the run trained to its steps, had nothing left to do, or stopped at --time-limit "
            "(a planned stop); 130 after Ctrl-C (SIGINT) and 143 after SIGTERM") in text
    assert ("saving checkpoint.pt (and, once the UNet stage has begun, model.safetensors and a last sample grid, "
            "which the limit does not include: tens of seconds on a CPU); the exit status is 0"
            in text)  # a stop in the VAE stage writes no model.safetensors
    assert "the UNet stage's batch size, over all processes (default: the preset's; the VAE stage's is --set" in text


@pytest.mark.parametrize("damage", ["truncated", "foreign objects"])
def test_an_unreadable_checkpoint_is_one_whole_line(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    if damage == "truncated":
        save_training_state(path, {"w": torch.zeros(64)})
        path.write_bytes(path.read_bytes()[:300])
        reason = "PytorchStreamReader failed reading zip archive: failed finding central directory"
    else:  # a pickle the weights-only loader refuses: torch's message is a dozen lines of advice
        torch.save({"format": "ldmkit-train-state", "x": np.zeros(2)}, path)
        reason = "it holds Python objects besides tensors and plain values"
    with pytest.raises(UserError) as err:
        load_training_state(path)
    message = str(err.value)
    assert "\n" not in message and reason in message, message
    assert message.endswith("); restore a copy, or start over in a new --out folder"), message


def test_a_lost_torchrun_process_is_one_line_not_a_traceback(monkeypatch, tmp_path, capsys):
    """A collective failing because another rank died printed ~35 lines of gloo traceback on every
    surviving rank, burying the dead rank's own error above it."""
    import ldmkit.train.run as run_module

    def lost(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:4242\nException raised from ...")

    monkeypatch.setattr(run_module, "run_training_outcome", lost)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--data", "emoji", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"ldm train (rank 1 of 2): error: lost contact with another process of this torchrun job "
        f"([../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4242); its "
        f"own error, if it had one, is above. What was saved in {tmp_path / 'run'} is kept: run the same command "
        f"again to resume"]
    monkeypatch.setattr(run_module, "run_training_outcome",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other error keeps its traceback
        main(["train", "--data", "emoji", "--out", str(tmp_path / "run")])
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(run_module, "run_training_outcome", lost)
    with pytest.raises(RuntimeError, match="Connection closed by peer"):  # one process: not a lost peer
        main(["train", "--data", "emoji", "--out", str(tmp_path / "run")])
