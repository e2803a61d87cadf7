"""A stop while the latent cache is encoded, under torchrun (gloo, 2 processes): the signal reaches
rank 0 alone, both ranks stop at the same batch (none waits forever in the gathering of the
shards, also with shards of unequal length) and exit alike; the rerun encodes it all and trains.
Only rank 0 takes the run folder's lock (a lock per rank would refuse rank 1)."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import torch

from ldmkit.train import latent_cache, load_inference_file, load_training_state
from ldmkit.train.run import run_training_outcome
from gloo_ranks import run_ranks
from test_ddp import WORLD, _config, _free_port
from test_train_e2e import one_thread, write_color_dataset  # noqa: F401 (autouse fixture)


def _sigterm_at_first_batch() -> None:
    """Send SIGTERM to this process as its first encoding batch goes to be encoded."""
    real_batches = latent_cache.ordered_batches

    def batches(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            if i == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    latent_cache.ordered_batches = batches  # this spawned process only


def _rank_main(rank: int, port: int, data: str, out: str, stop: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    if stop and rank == 0:
        _sigterm_at_first_batch()
    config = _config(Path(data))
    config.vae.batch_size = 4  # 2 a rank: shards of 11 and 10 images, 6 and 5 batches
    outcome = run_training_outcome(config, out)
    (Path(out) / f"exit{rank}.txt").write_text(str(outcome.exit_status))


def _two_ranks(data: Path, out: Path, *, stop: bool) -> list[str]:
    run_ranks(_rank_main, (_free_port(), str(data), str(out), stop), WORLD)
    return [(out / f"exit{rank}.txt").read_text() for rank in range(WORLD)]


def test_a_signal_to_rank_0_while_encoding_stops_both_ranks_alike(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=5, size=8)
    shutil.copy(data / "red" / "000.png", data / "red" / "extra.png")  # 21 images: shards of 11 and 10
    run = tmp_path / "run"
    assert _two_ranks(data, run, stop=True) == ["143", "143"]
    state = load_training_state(run / "checkpoint.pt")
    assert (state["stage"], state["complete"]) == ("vae", True)
    assert not (run / "latents.safetensors").exists()
    assert _two_ranks(data, run, stop=False) == ["0", "0"]
    assert load_inference_file(run)[2]["step"] == load_training_state(run / "checkpoint.pt")["step"] > 0
