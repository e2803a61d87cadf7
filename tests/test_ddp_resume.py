"""Exact resume under torchrun (gloo, 2 processes): a 2-rank run stopped and resumed equals the
same 2-rank run uninterrupted, bitwise, in plain steps and with both stages' steps captured.

As in test_resume.py, the stop goes through the real path: the flag is raised on rank 0 only
(a signal that reached one process) and the ranks agree on it at their next settle; each part
is a fresh `run_training` on both ranks, as rerunning the torchrun command is.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ldmkit.train import load_training_state, run_training
from ldmkit.train.step_guard import StepGuard
from gloo_ranks import run_ranks
from test_ddp import STEPS, VAE_STEPS, WORLD, _config, _free_port, _whole_step_graph_on_cpu
from test_resume import _losses, assert_same_training_state
from test_train_e2e import one_thread, write_color_dataset  # noqa: F401 (autouse fixture)


def _stop_rank0_after(steps: int) -> None:
    """Raise rank 0's stop flag after `steps` optimizer steps of this process (both stages)."""
    real_record, calls = StepGuard.record, {"n": 0}

    def record(self, row):
        calls["n"] += 1
        if calls["n"] == steps:
            self.stop.request("test")
        return real_record(self, row)

    StepGuard.record = record  # this spawned process only


def _rank_main(rank: int, port: int, data: str, out: str, graph: bool, stop_after: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    if graph:
        _whole_step_graph_on_cpu()
    if stop_after is not None and rank == 0:
        _stop_rank0_after(stop_after)
    run_training(_config(Path(data)), out)


def _two_ranks(data: Path, out: Path, *, graph: bool, stop_after: int | None = None) -> dict:
    run_ranks(_rank_main, (_free_port(), str(data), str(out), graph, stop_after), WORLD)
    return load_training_state(out / "checkpoint.pt")


@pytest.mark.parametrize("graph", [False, True], ids=["plain", "whole-step-graph"])
def test_two_ranks_stopped_and_resumed_match_an_uninterrupted_run(tmp_path, graph):
    data = write_color_dataset(tmp_path / "data", per_class=6, size=8)
    whole = _two_ranks(data, tmp_path / "whole", graph=graph)

    parts = tmp_path / "parts"
    state = _two_ranks(data, parts, graph=graph, stop_after=2)  # in the VAE stage
    assert (state["stage"], state["step"], state["complete"]) == ("vae", 2, False)
    state = _two_ranks(data, parts, graph=graph, stop_after=(VAE_STEPS - 2) + 2)  # the VAE's end, 2 UNet steps
    assert (state["stage"], state["step"]) == ("diffusion", 2)
    resumed = _two_ranks(data, parts, graph=graph)

    expected, got = _losses(tmp_path / "whole"), _losses(parts)
    assert len(expected) == VAE_STEPS + STEPS
    assert got == expected  # every loss, bitwise
    assert whole["step"] == STEPS
    assert_same_training_state(whole, resumed)
