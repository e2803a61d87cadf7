"""The whole-step CUDA graph of the diffusion stage (train/step_graph.py), checked on the CPU.

A CUDA graph is stood in for by `ReplayByCall`, which replays by running the recorded function
again and writing its results into the recorded outputs, as a graph's replay overwrites its
static outputs. That checks what the host does around a captured step: the batch copied into
the static inputs, the LR read from a device tensor, each step's loss and gradient norm copied
before the next replay overwrites them, the warm-up steps, the fallback when capture fails, and
a checkpoint that reads the same as the plain step's. The capture itself is measured on the GPU
(benchmarks/step_graph_check.py).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from ldmkit import compile_fallback
from ldmkit.models import AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig
from ldmkit.train.config import apply_overrides, preset_config
from ldmkit.train.context import StageContext
from ldmkit.train.diffusion_stage import DiffusionTrainer
from ldmkit.train.distributed import DistInfo
from ldmkit.train.latent_cache import LatentSet
from ldmkit.train.run import _resolve_models
from ldmkit.train.signals import StopSignal
from ldmkit.train.step_graph import StepGraph, step_graph_wanted
from ldmkit.train.vae_stage import VAETrainer


class ReplayByCall:
    """A CPU stand-in for a CUDA graph (see module doc). A CUDA graph's `record` does not run the
    work and StepGraph's first replay does; here `record` runs it, so that first replay is skipped."""

    def __init__(self) -> None:
        self.replays = 0

    def record(self, fn):
        self.fn, self.outputs, self.fresh = fn, tuple(fn()), True
        return self.outputs

    def replay(self) -> None:
        self.replays += 1
        if self.fresh:
            self.fresh = False
            return
        for static, value in zip(self.outputs, self.fn()):
            static.copy_(value)


class FailingCapture:
    def record(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def _dist(device: str = "cpu", world_size: int = 1) -> DistInfo:
    return DistInfo(rank=0, local_rank=0, world_size=world_size, device=torch.device(device))


def test_step_graph_is_wanted_on_gpus_with_graphs_asked_for(monkeypatch):
    monkeypatch.setattr(compile_fallback, "compile_blocker", lambda device: None)

    def run(**changes):
        config = preset_config("emoji")
        config.compile = True  # as `ldm train` on a GPU sets it
        for key, value in changes.items():
            setattr(config, key, value)
        return config

    assert run().compile_mode == "reduce-overhead" and run().precision == "bf16"
    assert preset_config("emoji").step_graph and preset_config("base").step_graph  # the default
    assert step_graph_wanted(run(), _dist("cuda"))
    assert step_graph_wanted(run(precision="fp32"), _dist("cuda"))
    assert step_graph_wanted(run(), _dist("cuda", world_size=2))  # torchrun: grad_sync.py in place of DDP
    assert not step_graph_wanted(run(precision="fp16"), _dist("cuda"))  # GradScaler
    assert not step_graph_wanted(run(compile_mode="default"), _dist("cuda"))
    assert not step_graph_wanted(run(step_graph=False), _dist("cuda"))
    assert not step_graph_wanted(run(compile=False), _dist("cuda"))
    assert not step_graph_wanted(run(), _dist("cpu"))


def test_replays_read_the_copied_inputs_and_overwrite_the_outputs():
    total = torch.zeros(())

    def step(x, nothing):
        assert nothing is None
        total.add_(x.sum())
        return (x * 2, total.clone())

    graph = ReplayByCall()
    stepper = StepGraph(step, warmup=2, new_graph=lambda: graph)
    outputs = [stepper(torch.full((3,), float(i)), None) for i in range(1, 6)]
    assert stepper.captured and graph.replays == 3  # steps 3, 4, 5
    assert [o[0].tolist() for o in outputs[:2]] == [[2.0] * 3, [4.0] * 3]
    assert outputs[4][0].tolist() == [10.0] * 3 and outputs[4][1].item() == 3 * (1 + 2 + 3 + 4 + 5)
    assert outputs[2][0] is outputs[4][0]  # the static outputs: a caller copies what it keeps


def test_a_failed_capture_warns_once_and_the_steps_go_on_plain():
    calls = []
    stepper = StepGraph(lambda x: calls.append(x.item()) or (x + 1,), warmup=1, new_graph=FailingCapture)
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        results = [stepper(torch.tensor(float(i)))[0].item() for i in range(4)]
    assert results == [1.0, 2.0, 3.0, 4.0] and calls == [0.0, 1.0, 2.0, 3.0]
    assert not stepper.captured and "operation not permitted" in stepper.failed


def _trainer(tmp_path, *, graph: bool) -> DiffusionTrainer:
    """A small class-conditional UNet on random latents, on the CPU, with the LR still warming up
    over the steps the tests run (so each step reads a new LR)."""
    torch.manual_seed(0)
    config = preset_config("tiny")
    apply_overrides(config, dict(steps=12, batch_size=8, warmup=10, sample_every=0, val_every=0))
    config.diffusion.model = {**config.diffusion.model, "base_channels": 16, "channel_mult": (1, 2),
                              "attention_levels": (1,), "head_dim": 16, "norm_groups": 4}
    _resolve_models(config, 3, 4)
    vae = AutoencoderKL(AutoencoderKLConfig.from_dict(config.vae.model))
    unet = UNet(UNetConfig.from_dict(config.diffusion.model))
    gen = torch.Generator().manual_seed(1)
    shape = (vae.config.latent_channels, 4, 4)
    latents = LatentSet(mean=torch.randn((64, *shape), generator=gen), labels=torch.randint(0, 4, (64,), generator=gen),
                        std=0.1 * torch.ones((64, *shape)))
    ctx = StageContext(run_dir=tmp_path, config=config, dist=_dist(), stop=StopSignal(), save_state=lambda s: None)
    trainer = DiffusionTrainer(unet, vae, latents, None, ctx, [str(i) for i in range(4)])
    if graph:
        trainer.step_graph = StepGraph(trainer._device_step, warmup=2, new_graph=ReplayByCall)
    return trainer


def _train(trainer: DiffusionTrainer, steps: int) -> tuple[list[float], list[float]]:
    norms = [trainer.train_step() for _ in range(steps)]
    return trainer.guard.settle(trainer.step, None), [n.item() for n in norms]


def test_a_replayed_step_trains_as_the_plain_step_does(tmp_path):
    plain, graphed = _trainer(tmp_path / "a", graph=False), _trainer(tmp_path / "b", graph=True)
    losses, norms = _train(plain, 8)
    graph_losses, graph_norms = _train(graphed, 8)
    assert graphed.step_graph.captured and graphed.step_graph.graph.replays == 6
    assert len(set(graph_losses)) == 8 and len(set(graph_norms)) == 8  # each step's own values, not the last's
    torch.testing.assert_close(graph_losses, losses)
    torch.testing.assert_close(graph_norms, norms)
    for a, b in zip(plain.unet.parameters(), graphed.unet.parameters()):
        torch.testing.assert_close(b, a)
    for a, b in zip(plain.ema.module.parameters(), graphed.ema.module.parameters()):
        torch.testing.assert_close(b, a)
    assert graphed.lr_now == plain.lr_now == plain.opt.param_groups[0]["lr"]
    assert graphed.device_lr.tensor.item() == pytest.approx(plain.lr_now)


def test_a_checkpoint_of_a_replayed_step_reads_as_the_plain_steps(tmp_path):
    plain, graphed = _trainer(tmp_path / "a", graph=False), _trainer(tmp_path / "b", graph=True)
    _train(plain, 4), _train(graphed, 4)
    groups = plain.state_dict()["optimizer"]["param_groups"]
    graph_groups = graphed.state_dict()["optimizer"]["param_groups"]
    assert graph_groups == groups and isinstance(graph_groups[0]["lr"], float)
    assert graphed.opt.param_groups[0]["lr"] is graphed.device_lr.tensor  # the live optimizer keeps its tensor

    resumed = _trainer(tmp_path / "c", graph=True)
    resumed.load_state_dict(graphed.state_dict())
    assert not resumed.step_graph.captured  # loading replaces the captured tensors: a fresh capture follows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses, _ = _train(resumed, 4)
    expected, _ = _train(plain, 4)
    torch.testing.assert_close(losses, expected)


def test_a_run_with_the_step_graph_says_so_in_its_log(tmp_path):
    import json

    trainer = _trainer(tmp_path, graph=True)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    told = [r["text"] for r in rows if r.get("event") == "message" and "CUDA graph" in r["text"]]
    # warm-up 2: the third step is captured
    assert told == ["step 3 on: the step replays as one CUDA graph (--no-step-graph turns this off)"]
    assert rows[-1]["event"] == "end" and rows[-1]["step"] == 12
    # the stage's end frees the captured step and its gradients (the graph's memory pool)
    assert not trainer.step_graph.captured and all(p.grad is None for p in trainer.params)


def _vae_trainer(tmp_path, *, graph: bool, gan: bool = False) -> VAETrainer:
    """The tiny preset's VAE stage on the CPU, the LR warming up over the steps the tests run."""
    torch.manual_seed(0)
    config = preset_config("tiny")
    apply_overrides(config, {"vae_steps": 12, "vae.batch_size": 4, "vae.warmup": 10,
                             "disc_start": 3 if gan else -1, "vae.disc_layers": 1, "vae.disc_channels": 8})
    config.image_size = 16
    _resolve_models(config, 3, 4)
    vae = AutoencoderKL(AutoencoderKLConfig.from_dict(config.vae.model))
    ctx = StageContext(run_dir=tmp_path, config=config, dist=_dist(), stop=StopSignal(), save_state=lambda s: None)
    trainer = VAETrainer(vae, None, ctx)
    if graph:
        trainer.step_graph = StepGraph(trainer._captured_step, warmup=2, new_graph=ReplayByCall)
    trainer._wrap()
    return trainer


def test_a_replayed_vae_step_trains_as_the_plain_step_does(tmp_path):
    images = torch.rand((8, 4, 3, 16, 16), generator=torch.Generator().manual_seed(2)) * 2 - 1
    plain, graphed = _vae_trainer(tmp_path / "a", graph=False), _vae_trainer(tmp_path / "b", graph=True)
    outs = [[t.train_step(x) for x in images] for t in (plain, graphed)]
    assert graphed.step_graph.captured and graphed.step_graph.graph.replays == 6
    assert len({o["rec"].item() for o in outs[1]}) == 8  # each step's own values, not the last's
    # no term keeps its step's autograd graph alive (on the GPU: AccumulateGrad stream warnings)
    assert all(v.grad_fn is None for o in outs[0] for v in o.values() if isinstance(v, torch.Tensor))
    for key in ("loss", "rec", "kl"):
        torch.testing.assert_close([o[key] for o in outs[1]], [o[key] for o in outs[0]])
    assert [o["lr"] for o in outs[1]] == [o["lr"] for o in outs[0]] and len({o["lr"] for o in outs[0]}) == 8
    torch.testing.assert_close(graphed.guard.settle(8, None), plain.guard.settle(8, None))
    for a, b in zip(plain.vae.parameters(), graphed.vae.parameters()):
        torch.testing.assert_close(b, a)
    assert graphed.state_dict()["optimizer"]["param_groups"] == plain.state_dict()["optimizer"]["param_groups"]
    graphed.load_state_dict(plain.state_dict())
    assert not graphed.step_graph.captured  # loading replaces the captured tensors: a fresh capture follows


def test_the_vae_stage_says_when_its_step_is_captured_and_frees_it_at_the_end(tmp_path):
    import json

    from test_train_e2e import write_color_dataset

    from ldmkit.data import load_image_dataset

    trainer = _vae_trainer(tmp_path, graph=True)
    trainer.dataset = load_image_dataset(str(write_color_dataset(tmp_path / "data", per_class=4)), "train",
                                         image_size=16, flip=False, channels=3)
    trainer.run.num_workers = 0
    assert trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    told = [r["text"] for r in rows if r.get("event") == "message" and "CUDA graph" in r["text"]]
    assert told == ["step 3 on: the step replays as one CUDA graph (--no-step-graph turns this off)"]
    assert trainer.step == 12 and trainer.step_graph.graph is None and all(p.grad is None for p in trainer.params)


def test_the_vae_stage_captures_its_step_only_without_the_gan(tmp_path, monkeypatch):
    import ldmkit.train.vae_stage as vae_stage

    monkeypatch.setattr(vae_stage, "step_graph_wanted", lambda run, dist: True)  # as on one GPU
    assert _vae_trainer(tmp_path / "a", graph=False).step_graph is not None
    assert _vae_trainer(tmp_path / "b", graph=False, gan=True).step_graph is None  # two optimizers, two backwards
