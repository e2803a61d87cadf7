"""Generation through the compiled UNet (`ldmkit.compiled_unet`): when it is used, and that it
computes what the plain module computes. On the CPU the path is torch.compile with inductor
(no CUDA graphs); the GPU path adds `mode="reduce-overhead"`, measured in benchmarks/."""
from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_class_models

from ldmkit import compile_fallback, compiled_unet
from ldmkit.compiled_unet import (
    AUTO_MIN_IMAGES,
    CompiledUNet,
    compile_options,
    wants_compile,
)
from ldmkit.diffusion import NoiseSchedule
from ldmkit.errors import UserError
from ldmkit.pipeline import LatentDiffusionPipeline

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # device objects need no GPU


def _pipeline(compile: str) -> LatentDiffusionPipeline:
    vae, unet = tiny_class_models(3)
    return LatentDiffusionPipeline(unet, vae, NoiseSchedule.create("scaled_linear"), class_names=["a", "b", "c"],
                                   image_size=16, device="cpu", compile=compile)


def test_auto_compiles_only_large_jobs_on_cuda(monkeypatch):
    monkeypatch.setattr(compile_fallback, "compile_blocker", lambda device: None)  # a machine that can compile
    assert wants_compile("auto", CUDA, AUTO_MIN_IMAGES)
    assert not wants_compile("auto", CUDA, AUTO_MIN_IMAGES - 1)
    assert not wants_compile("auto", CPU, 10**6)
    assert wants_compile("on", CPU, 1) and not wants_compile("off", CUDA, 10**6)


def test_cuda_graphs_on_cuda_only():
    assert compile_options(CUDA)["mode"] == "reduce-overhead"
    assert "mode" not in compile_options(CPU)


def test_bad_setting_is_a_user_error_at_construction():
    with pytest.raises(UserError, match="compile must be one of"):
        _pipeline("sometimes")


def test_off_and_auto_on_cpu_never_build_the_compiled_unet():
    for setting in ("off", "auto"):
        pipe = _pipeline(setting)
        pipe.generate_uint8([0, 1], [0, 1], steps=2, cfg=2.0)
        assert pipe._compiled is None


def test_compiled_generation_equals_plain_generation(monkeypatch):
    """Dynamo's capture of the whole guided sampling call, checked exactly (backend "eager" runs
    the captured graph op for op, so any difference is a capture bug, not rounding)."""
    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": "eager", "dynamic": False})
    plain, fast = _pipeline("off"), _pipeline("on")
    seeds, labels = [3, 4, 5], [0, 1, 2]
    expected = plain.generate_uint8(seeds, labels, steps=4, cfg=2.0)
    got = fast.generate_uint8(seeds, labels, steps=4, cfg=2.0)
    assert isinstance(fast._compiled, CompiledUNet)
    assert torch.equal(got, expected)


def test_inductor_compiled_unet_matches_the_module():
    """The real CPU path (inductor kernels): fused float arithmetic may round differently, so the
    check is a tolerance far below bf16's (2**-8), the precision the GPU path runs at."""
    pipe = _pipeline("on")
    fn = CompiledUNet(pipe.unet, CPU)
    torch.manual_seed(1)
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([10.0, 900.0])
    labels = torch.tensor([0, 3])  # 3 = the null class
    with torch.no_grad():
        expected, got = pipe.unet(x, t, class_labels=labels), fn(x, t, class_labels=labels)
    assert float((got - expected).norm() / expected.norm()) < 1e-4


def test_cuda_runs_the_unet_channels_last(monkeypatch):
    """On CUDA the compiled UNet's weights and inputs are channels_last (the layout its compiled
    GroupNorm is written for); on the CPU they keep PyTorch's default. Checked on the CPU with the
    CUDA choice patched in: the layout changes, the function does not."""
    assert compiled_unet.generation_memory_format(CUDA) == torch.channels_last
    assert compiled_unet.generation_memory_format(CPU) == torch.contiguous_format
    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": "eager", "dynamic": False})
    monkeypatch.setattr(compiled_unet, "generation_memory_format", lambda device: torch.channels_last)
    pipe = _pipeline("on")
    torch.manual_seed(2)
    x, t, labels = torch.randn(2, 4, 4, 4), torch.tensor([5.0, 500.0]), torch.tensor([1, 2])
    with torch.no_grad():
        expected = pipe.unet(x, t, class_labels=labels)
        seen = []
        pipe.unet.conv_in.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].is_contiguous()))
        got = CompiledUNet(pipe.unet, CPU)(x, t, class_labels=labels)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen == [False]  # the UNet got x channels_last, not as the caller laid it out
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _sampled_batch_sizes(pipe: LatentDiffusionPipeline) -> list[int]:
    """The size of every batch `pipe` samples from now on (recorded outside the compiled code,
    where dynamo's cached graphs would replay a hook's side effects onto an older list)."""
    seen: list[int] = []
    sample_batch = pipe.generate_latents

    def recorded(seeds, labels, **sampling):
        seen.append(len(seeds))
        return sample_batch(seeds, labels, **sampling)

    pipe.generate_latents = recorded
    return seen


def test_compiled_jobs_run_every_batch_at_one_size_and_keep_the_same_images(monkeypatch):
    """A short last batch would be a second compile of the static-shaped UNet: it is filled up
    with copies of its last image, which are dropped. The kept images are the unpadded ones."""
    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": "eager", "dynamic": False})
    plain, fast = _pipeline("off"), _pipeline("on")
    seeds, labels = [3, 4, 5, 6, 7], [0, 1, 2, 0, 1]
    plain_batches, fast_batches = _sampled_batch_sizes(plain), _sampled_batch_sizes(fast)
    expected = plain.generate_uint8(seeds, labels, batch_size=2, steps=2, cfg=2.0)
    got = fast.generate_uint8(seeds, labels, batch_size=2, steps=2, cfg=2.0)
    assert plain_batches == [2, 2, 1] and fast_batches == [2, 2, 2]
    assert torch.equal(got, expected) and got.shape[0] == 5


def test_one_short_batch_is_padded_only_when_asked(monkeypatch):
    """A job smaller than one batch compiles for its own size (`ldm generate --n 10`: padding it
    to 64 would be six times the work), unless the caller reuses compiles across jobs."""
    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": "eager", "dynamic": False})
    pipe = _pipeline("on")
    batches = _sampled_batch_sizes(pipe)
    alone = pipe.generate_uint8([3, 4, 5], [0, 1, 2], batch_size=8, steps=1, cfg=2.0)
    assert batches == [3]
    batches.clear()
    whole = pipe.generate_uint8([3, 4, 5], [0, 1, 2], batch_size=8, whole_batches=True, steps=1, cfg=2.0)
    assert batches == [8] and torch.equal(whole, alone)


def test_a_long_lived_process_compiles_every_batch_size_it_meets(monkeypatch):
    """`ldm serve` compiles one graph per batch size (powers of two to 64, doubled by guidance:
    eight) and a Python session may load several models: at dynamo's default of 8 graphs per
    function every later size would run uncompiled, without a word from ldmkit. A one-layer
    stand-in for the UNet keeps the twelve compiles quick; the limit is the same for any forward."""
    import torch._dynamo

    class OneLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x, t, class_labels=None):  # the UNet's signature
            return self.conv(x) * t[:, None, None, None]

    compiled = []

    def counting_backend(gm, example_inputs):
        compiled.extend(x.shape[0] for x in example_inputs if tuple(x.shape[1:]) == (4, 4, 4))  # the latents
        return gm.forward

    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": counting_backend,
                                                                          "dynamic": False})
    torch._dynamo.reset()
    net = OneLayer()
    fast = CompiledUNet(net, CPU)
    sizes = list(range(1, 13))
    with torch.no_grad():
        for b in sizes:
            x, t = torch.randn(b, 4, 4, 4), torch.rand(b)
            torch.testing.assert_close(fast(x, t), net(x, t))
    assert compiled == sizes
