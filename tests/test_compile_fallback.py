"""Jobs on machines that cannot compile (`ldmkit.compile_fallback`): known blockers skip the
compile with one warning; a compiler that fails at the first call falls back to the module, with
the same results; an error in the model itself is not hidden. Compiler failures are made on the CPU
with a dynamo backend that raises what a machine without a C compiler raises."""
from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import tiny_class_models
from torch import nn

from ldmkit import compile_fallback, compiled_unet
from ldmkit.compile_fallback import EagerFallback, compile_blocker
from ldmkit.diffusion import NoiseSchedule
from ldmkit.pipeline import LatentDiffusionPipeline
from ldmkit.train import step_compile
from ldmkit.train.config import RunConfig
from ldmkit.train.distributed import DistInfo

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # device objects need no GPU
NO_COMPILER = "Failed to find C compiler. Please specify via CC environment variable."


class FailingBackend:
    """A dynamo backend that fails like inductor without a C compiler, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.calls += 1
        raise RuntimeError(NO_COMPILER)


def test_blockers_known_without_trying(monkeypatch):
    assert compile_blocker(CPU) is None  # the CPU's compiler shows only on trying
    monkeypatch.setattr(compile_fallback, "TRITON_IMPORTABLE", False)
    assert "Triton is not installed" in compile_blocker(CUDA)
    monkeypatch.setattr(compile_fallback, "TRITON_IMPORTABLE", True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert "compute capability 6.1" in compile_blocker(CUDA)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert compile_blocker(CUDA) is None


def test_compiler_failure_falls_back_once_with_the_same_output():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    backend = FailingBackend()
    wrapped = EagerFallback(torch.compile(module, backend=backend), module, what="training", flag="--no-compile")
    x = torch.randn(3, 4)
    with pytest.warns(RuntimeWarning, match="training runs without torch.compile .*C compiler.*--no-compile"):
        first = wrapped(x)
    torch.testing.assert_close(first, module(x), rtol=0, atol=0)
    assert wrapped.fell_back and backend.calls >= 1
    calls = backend.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not per call
        wrapped(x)
    assert backend.calls == calls  # no second attempt
    assert [p for p in wrapped.parameters()] == list(module.parameters())  # what the optimizer and GradientMean see


def test_an_error_in_the_model_is_not_a_fallback():
    class Broken(nn.Module):
        def forward(self, x):
            return x @ torch.ones(5, 5)  # x is [3, 4]: a shape error, not the compiler's

    module = Broken()
    wrapped = EagerFallback(torch.compile(module, backend="eager"), module, what="training", flag="--no-compile")
    with pytest.raises(Exception) as raised:
        wrapped(torch.randn(3, 4))
    assert not isinstance(raised.value, compile_fallback._compiler_failure())
    assert not wrapped.fell_back


def _pipeline(compile: str) -> LatentDiffusionPipeline:
    vae, unet = tiny_class_models(3)
    return LatentDiffusionPipeline(unet, vae, NoiseSchedule.create("scaled_linear"), class_names=["a", "b", "c"],
                                   image_size=16, device="cpu", compile=compile)


def test_generation_falls_back_and_loses_no_image(monkeypatch):
    backend = FailingBackend()
    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": backend, "dynamic": False})
    seeds, labels = [3, 4], [0, 2]
    expected = _pipeline("off").generate_uint8(seeds, labels, steps=3, cfg=2.0)
    pipe = _pipeline("on")
    with pytest.warns(RuntimeWarning, match="generation runs without torch.compile .*--compile off"):
        got = pipe.generate_uint8(seeds, labels, steps=3, cfg=2.0)
    assert torch.equal(got, expected)
    assert "C compiler" in pipe._compiled.fallback["failed"]
    assert backend.calls == 1  # the later steps ran the module without trying again
    # the failure is remembered: a later job in this process does not try again, nor warn again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not compiled_unet.wants_compile("on", CPU, 1)


def test_blocked_machines_skip_the_compile_with_one_warning(monkeypatch):
    monkeypatch.setattr(compile_fallback, "compile_blocker", lambda device: "Triton is not installed")
    with pytest.warns(RuntimeWarning, match="generation runs without torch.compile .*: Triton is not installed"):
        assert not compiled_unet.wants_compile("auto", CUDA, 10**6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not compiled_unet.wants_compile("on", CUDA, 1)  # once per reason

    monkeypatch.setattr(compile_fallback, "compile_blocker", lambda device: "Triton is not installed")
    run, dist = RunConfig(compile=True), DistInfo(rank=0, local_rank=0, world_size=1, device=CUDA)
    module = nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match="training runs .*: Triton is not installed.*--no-compile"):
        compiled, graphs = step_compile.compile_for_training(module, run, dist)
    assert compiled is module and not graphs
    assert step_compile.weights_for_training(module, run, dist) is module
