"""What `ldm train` does with a run folder that already holds something: a model whose checkpoint
is gone (refused), another `ldm train` at work in it (refused, while readers go on), a run that
has already done what is asked (nothing, and no file touched)."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.train import apply_overrides, load_inference_file, run_training
from ldmkit.train.run import run_training_outcome
from ldmkit.train.run_lock import LOCK_NAME
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)
from test_train_paths import QUICK

VAE_STEPS, STEPS = 1, 2


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and mtime (a rewrite of the same bytes shows too)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_color_dataset(tmp_path_factory.mktemp("data"), per_class=4, size=8)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A run trained to the end (copied by each test that changes it)."""
    return run_training(micro_config(data, vae_steps=VAE_STEPS, steps=STEPS), tmp_path_factory.mktemp("r") / "run")


@pytest.fixture
def run(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def config(data: Path, **overrides):
    return apply_overrides(micro_config(data, vae_steps=VAE_STEPS, steps=STEPS), overrides)


# -- 1. a model without its checkpoint -------------------------------------------------------------


def test_a_model_without_its_checkpoint_is_not_trained_over(data, run):
    (run / "checkpoint.pt").unlink()
    before = files(run)
    with pytest.raises(UserError, match=r"holds a model \(model.safetensors, vae.safetensors\) but no "
                                        r"checkpoint.pt to resume from; choose a new --out, or remove the model"):
        run_training(config(data), run)
    assert files(run) == before, "nothing trained over, nothing appended to the log"

    (run / "model.safetensors").unlink()  # the VAE alone: a run from scratch would replace it too
    with pytest.raises(UserError, match=r"holds a model \(vae.safetensors\) but no checkpoint.pt"):
        run_training(config(data), run)
    # --stage diffusion reads RUN's own VAE and does not write it: that may go on without a checkpoint
    vae_before = (run / "vae.safetensors").read_bytes()
    run_training(config(data, stage="diffusion"), run)
    assert load_inference_file(run)[2]["step"] == STEPS
    assert (run / "vae.safetensors").read_bytes() == vae_before


# -- 3. one `ldm train` per folder -----------------------------------------------------------------

_HOLD_THE_LOCK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ldmkit.train.run_lock import locked_run_folder
    with locked_run_folder(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.read()  # until the test closes stdin (or kills this process)
""")


def test_a_second_train_into_a_folder_in_use_is_refused(data, run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THE_LOCK, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        # what a writer killed mid-save leaves (up to gigabytes): removed by the next run to take the lock
        from ldmkit.atomic import _HOST

        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout.strip()
        partial = [run / f".checkpoint.pt.{_HOST}.{ended}.0123abcd.tmp",
                   run / "samples" / f".step_000002.png.{_HOST}.{ended}.89abcdef.tmp"]
        elsewhere = run / f".model.safetensors.another-host.{ended}.0123abcd.tmp"  # its writer may live there
        elsewhere.write_bytes(b"")
        (run / "samples").mkdir(exist_ok=True)
        for path in partial:
            path.write_bytes(b"partial")
        (run / ".notes.tmp").write_text("a user's own file")
        before = files(run)
        status = main(["train", *QUICK, "--data", str(data), "--out", str(run)])
        err = capsys.readouterr().err
        assert status == 2 and f"{run} is in use by another ldm train (pid {holder.pid})" in err, err
        assert files(run) == before  # the holder's lock file included: the refused run leaves it alone
        assert load_inference_file(run)[2]["step"] == STEPS  # readers (ldm generate, ldm info) take no lock
        holder.send_signal(signal.SIGKILL)  # a run that dies leaves no stale lock: the OS drops a flock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    run_training(config(data, steps=STEPS + 1), run)
    assert load_inference_file(run)[2]["step"] == STEPS + 1
    assert not (run / LOCK_NAME).exists()  # removed at the end of a run
    assert not any(path.exists() for path in partial) and (run / ".notes.tmp").exists() and elsewhere.exists()


def test_a_refused_run_leaves_no_folder_for_its_lock(data, tmp_path):
    fresh = tmp_path / "new" / "run"
    with pytest.raises(UserError, match="nothing to resume"):
        run_training(config(data), fresh, resume=True)
    assert not (tmp_path / "new").exists()


# -- 6. a rerun with nothing to do -----------------------------------------------------------------


def test_a_finished_run_rerun_does_nothing_and_writes_nothing(data, run, capsys):
    capsys.readouterr()
    before = files(run)
    outcome = run_training_outcome(config(data), run)
    out = capsys.readouterr().out
    assert out == (f"{run} is already trained to step {STEPS} (--steps {STEPS}): nothing to do; "
                   "raise --steps to train further\n")
    assert outcome.exit_status == 0 and outcome.stopped_by is None
    assert files(run) == before
    # a lower --steps, too: the rerun neither trains nor records a --steps it did not train to
    run_training_outcome(config(data, steps=1), run)
    assert "already trained to step 2 (--steps 1): nothing to do" in capsys.readouterr().out
    assert files(run) == before
    # --stage vae on a run past its VAE stage
    run_training_outcome(config(data, stage="vae"), run)
    assert "has finished its VAE stage: nothing to do" in capsys.readouterr().out
    assert files(run) == before


def test_a_deleted_vae_file_is_written_again_by_stage_vae(data, run, capsys):
    from safetensors.torch import load_file

    before = load_file(run / "vae.safetensors")
    (run / "vae.safetensors").unlink()
    capsys.readouterr()
    assert run_training_outcome(config(data, stage="vae"), run).exit_status == 0
    out = capsys.readouterr().out
    assert f"VAE stage done: {run / 'vae.safetensors'}" in out  # it said so, with no file
    data_line = next(line for line in out.splitlines() if line.startswith("data: "))
    assert data_line.endswith(", random flip") == config(data).flip  # the stages flip; the set never said so
    after = load_file(run / "vae.safetensors")
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_a_finished_run_in_a_folder_this_user_cannot_write(data, run, capsys, monkeypatch):
    """Read-only (a shared results folder, a read-only mount): the finished run says "nothing to
    do" as it does elsewhere (it failed on creating its lock); an unfinished one is refused in a line."""
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == run and mode & os.W_OK
                        else real_access(path, mode, **kw))  # the tests run as root, whom chmod does not stop
    before = files(run)
    capsys.readouterr()
    assert run_training_outcome(config(data), run).exit_status == 0
    assert "nothing to do" in capsys.readouterr().out
    assert files(run) == before and not (run / LOCK_NAME).exists()
    with pytest.raises(UserError, match=r"is not writable, and ldm train writes its checkpoints, model and log "
                                        r"there: give another --out, or make it writable"):
        run_training_outcome(config(data, steps=STEPS + 1), run)


def test_a_model_older_than_the_finished_checkpoint_is_exported_again(data, run, capsys):
    """The checkpoint is written before the model: a run killed (or out of disk) during its last
    export was "already trained ... nothing to do" with the model of the step before."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    model = run / "model.safetensors"
    with safe_open(str(model), framework="pt") as f:
        final = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(str(model), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(model), metadata={**metadata, "step": json.dumps(STEPS - 1)})  # the last export cut
    capsys.readouterr()
    assert run_training_outcome(config(data), run).exit_status == 0
    assert "nothing to do" not in capsys.readouterr().out
    assert load_inference_file(run)[2]["step"] == STEPS
    with safe_open(str(model), framework="pt") as f:  # the same weights (the metadata's order may differ)
        assert all(torch.equal(f.get_tensor(k), tensor) for k, tensor in final.items())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_data_loading_workers_do_not_hold_the_run_lock(tmp_path):
    """Forked workers inherited the lock's descriptor: a run killed with -9 kept its folder locked
    for seconds, and the rerun was refused in the name of a dead pid."""
    import os

    import torch

    from ldmkit.train.image_batches import _loader
    from ldmkit.train.run_lock import _holder, locked_run_folder

    class Items:
        def __len__(self) -> int:
            return 4

        def load_uint8(self, index: int):
            return torch.zeros((3, 2, 2), dtype=torch.uint8), index

    run = tmp_path / "run"
    with locked_run_folder(run):
        batches = iter(_loader(Items(), [[0, 1], [2, 3]], torch.device("cpu"), num_workers=1))
        next(batches)
        worker = batches._workers[0].pid
        opened = {os.readlink(f"/proc/{worker}/fd/{n}") for n in os.listdir(f"/proc/{worker}/fd")}
        assert str(run / LOCK_NAME) not in opened
        del batches
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "lock").write_text(f"{ended.stdout.strip()} {__import__('socket').gethostname()}\n")
    assert "which has ended" in _holder(tmp_path / "lock")
