"""compile_for_training: which mode each stage gets, and the layout switch it sets on CUDA.
torch.compile is replaced by a recorder, so the decisions are checked without a GPU."""
from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn

from ldmkit import compile_fallback
from ldmkit.train import step_compile
from ldmkit.train.config import preset_config
from ldmkit.train.distributed import DistInfo


@pytest.fixture(autouse=True)
def can_compile(monkeypatch):
    """A machine whose toolchain can compile (`compile_fallback.compile_blocker` finds nothing)."""
    monkeypatch.setattr(compile_fallback, "compile_blocker", lambda device: None)


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
    linear = nn.Linear(2, 2)
    module, graphs = step_compile.compile_for_training(linear, run, _dist("cuda"))
    assert compiled == ["reduce-overhead"] and graphs
    assert list(module.parameters()) == list(linear.parameters())  # wrapped to fall back, same parameters
    assert inductor_config.force_layout_optimization


def test_a_stage_without_graphs_gets_the_plain_mode_and_torchrun_keeps_the_graphs(compiled):
    run = _run()
    assert step_compile.compile_for_training(nn.Linear(2, 2), run, _dist("cuda"), graphs_allowed=False)[1] is False
    # under torchrun the gradients are averaged outside the compiled module (grad_sync.py): no DDP
    # hooks inside it, so it replays CUDA graphs as on one GPU
    assert step_compile.compile_for_training(nn.Linear(2, 2), run, _dist("cuda", 2))[1] is True
    assert compiled == ["default", "reduce-overhead"]


def test_nothing_is_compiled_on_the_cpu_or_when_turned_off(compiled):
    run = _run()
    model = nn.Linear(2, 2)
    assert step_compile.compile_for_training(model, run, _dist("cpu")) == (model, False)
    run.compile = False
    assert step_compile.compile_for_training(model, run, _dist("cuda")) == (model, False)
    assert compiled == [] and not inductor_config.force_layout_optimization


def test_compiled_training_stores_convolution_weights_channels_last():
    # The layout-optimised graph's weight gradients are channels_last; weights in that layout take
    # them without autograd's copy to the parameter's strides. Values are unchanged.
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(4, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = _run()
    out = step_compile.weights_for_training(model, run, _dist("cuda"))
    assert out[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not out[0].weight.is_contiguous()
    assert all(torch.equal(v, before[k]) for k, v in out.state_dict().items())
    other = nn.Conv2d(3, 8, 3)
    assert step_compile.weights_for_training(other, run, _dist("cpu")).weight.is_contiguous()
    run.compile = False
    assert step_compile.weights_for_training(other, run, _dist("cuda")).weight.is_contiguous()


def _adamw_two_steps(weights_cl_on_resume: bool, match_state: bool) -> torch.Tensor:
    """A conv trained one fused-AdamW step, its optimizer state saved and loaded into a fresh
    optimizer (optionally after the weights went channels_last), then one more step."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    x = torch.randn(2, 8, 6, 6)
    opt = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    conv(x).square().mean().backward()
    opt.step()
    opt.zero_grad()
    saved = opt.state_dict()
    if weights_cl_on_resume:
        conv.to(memory_format=torch.channels_last)
    resumed = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    resumed.load_state_dict(saved)
    if match_state:
        step_compile.optimizer_state_like_params(resumed)
    conv(x).square().mean().backward()
    resumed.step()
    return conv.weight.detach().contiguous()


def test_a_loaded_optimizer_state_takes_its_parameters_layout():
    # A fused AdamW reads a parameter and its moments as flat memory: NCHW moments beside
    # channels_last weights (a CPU run resumed on a GPU) update the wrong elements (torch 2.13,
    # CPU: off by up to 0.16 after one step without the matching).
    want = _adamw_two_steps(weights_cl_on_resume=False, match_state=False)
    got = _adamw_two_steps(weights_cl_on_resume=True, match_state=True)
    assert torch.allclose(got, want, atol=1e-6)
