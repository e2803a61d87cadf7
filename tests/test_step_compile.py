"""compile_for_training: which mode each stage gets, and the layout switch it sets on CUDA.
torch.compile is replaced by a recorder, so the decisions are checked without a GPU."""
from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn

from ldmkit.train import step_compile
from ldmkit.train.config import preset_config
from ldmkit.train.distributed import DistInfo


@pytest.fixture
def compiled(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, mode: calls.append(mode) or module)
    saved = inductor_config.force_layout_optimization  # a config module: set and restore it by hand
    inductor_config.force_layout_optimization = False
    yield calls
    inductor_config.force_layout_optimization = saved


def _run():
    run = preset_config("fashion-mnist")
    run.compile = True  # as `ldm train` sets it unless --no-compile
    return run


def _dist(device: str, world_size: int = 1) -> DistInfo:
    return DistInfo(rank=0, local_rank=0, world_size=world_size, device=torch.device(device))


def test_cuda_training_compiles_with_graphs_and_channels_last_convolutions(compiled):
    run = _run()
    module, graphs = step_compile.compile_for_training(nn.Linear(2, 2), run, _dist("cuda"))
    assert compiled == ["reduce-overhead"] and graphs
    assert inductor_config.force_layout_optimization


def test_ddp_or_a_stage_without_graphs_gets_the_plain_mode(compiled):
    run = _run()
    assert step_compile.compile_for_training(nn.Linear(2, 2), run, _dist("cuda", 2))[1] is False
    assert step_compile.compile_for_training(nn.Linear(2, 2), run, _dist("cuda"), graphs_allowed=False)[1] is False
    assert compiled == ["default", "default"]


def test_nothing_is_compiled_on_the_cpu_or_when_turned_off(compiled):
    run = _run()
    model = nn.Linear(2, 2)
    assert step_compile.compile_for_training(model, run, _dist("cpu")) == (model, False)
    run.compile = False
    assert step_compile.compile_for_training(model, run, _dist("cuda")) == (model, False)
    assert compiled == [] and not inductor_config.force_layout_optimization
