"""Data parallelism on CPU (gloo): 2 processes equal 1 process with the same global batch.

Each spawned rank runs the real `run_training` with torchrun's environment variables set by
hand; a wrapper around `DiffusionTrainer.train` saves every rank's final UNet so the ranks
can be compared with each other and with a single-process run. The ranks average their
gradients with grad_sync.GradientMean: in plain steps, in the VAE's GAN phase (its
discriminator's too), and inside a whole-step graph, stood in for by test_step_graph's
`ReplayByCall` (both stages capture after one warm-up step).
"""
from __future__ import annotations

import functools
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from ldmkit.models import UNet, UNetConfig
from ldmkit.train import diffusion_stage, load_training_state, run_training, vae_stage
from ldmkit.train.config import apply_overrides
from ldmkit.train.diffusion_stage import DiffusionTrainer
from ldmkit.train.vae_stage import VAETrainer
from gloo_ranks import run_ranks
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)

WORLD = 2
VAE_STEPS, STEPS, BATCH = 3, 4, 8


def _config(data: Path, gan: bool = False):
    # A small LR: Adam divides by sqrt(v), which turns last-bit differences in the gradient
    # (the order of the all-reduce sums) into differences of order lr x (relative grad noise).
    config = micro_config(data, vae_steps=VAE_STEPS, steps=STEPS, batch_size=BATCH)
    config.diffusion.lr = config.vae.lr = 2e-4
    if gan:  # the discriminator from the VAE's second step
        apply_overrides(config, {"disc_start": 1, "vae.disc_layers": 1, "vae.disc_channels": 8})
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _how_it_stepped(trainer) -> str:
    """The model type the trainer stepped through and how many times its captured step replayed."""
    graph = trainer.step_graph.graph if trainer.step_graph is not None else None
    return f"{type(trainer.model).__name__} {graph.replays if graph is not None else 0}"


def _save_rank_weights(folder: Path, rank: int) -> None:
    """Wrap both stages' `train` (this spawned process only): save the UNet and how each stage stepped."""
    real_train, real_vae_train = DiffusionTrainer.train, VAETrainer.train
    seen = []

    def vae_train(self: VAETrainer) -> bool:
        # the stage frees its capture when it ends: look at it just before
        real_release = vae_stage.release_training_memory
        vae_stage.release_training_memory = lambda opt, graph: (seen.append(_how_it_stepped(self)),
                                                                real_release(opt, graph))
        try:
            return real_vae_train(self)
        finally:
            vae_stage.release_training_memory = real_release
            if self.disc is not None:
                torch.save({"vae": self.vae.state_dict(), "disc": self.disc.state_dict()}, folder / f"gan{rank}.pt")

    def train(self: DiffusionTrainer) -> None:
        real_release = diffusion_stage.release_training_memory
        diffusion_stage.release_training_memory = lambda opt, graph: (seen.insert(0, _how_it_stepped(self)),
                                                                      real_release(opt, graph))
        try:
            real_train(self)
        finally:
            diffusion_stage.release_training_memory = real_release
        torch.save({k: v.detach().clone() for k, v in self.unet.state_dict().items()}, folder / f"rank{rank}.pt")
        (folder / f"rank{rank}.txt").write_text(", ".join(seen))

    DiffusionTrainer.train, VAETrainer.train = train, vae_train


def _whole_step_graph_on_cpu() -> None:
    """As on GPUs with CUDA graphs: both stages capture their step (stood in for on the CPU)."""
    from test_step_graph import ReplayByCall

    from ldmkit.train import step_graph

    for stage in (diffusion_stage, vae_stage):  # this spawned process only
        stage.step_graph_wanted = lambda run, dist: True
        stage.StepGraph = functools.partial(step_graph.StepGraph, warmup=1, new_graph=ReplayByCall)


def _rank_main(rank: int, port: int, data: str, out: str, weights: str, graph: bool, gan: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    _save_rank_weights(Path(weights), rank)
    if graph:
        _whole_step_graph_on_cpu()
    run_training(_config(Path(data), gan), out)


def _two_ranks(tmp_path: Path, *, graph: bool, gan: bool) -> tuple[Path, Path]:
    """(the data folder, the folder of each rank's saved weights) after a 2-rank run in tmp_path/ddp."""
    data = write_color_dataset(tmp_path / "data", per_class=6, size=8)
    weights = tmp_path / "weights"
    weights.mkdir()
    run_ranks(_rank_main, (_free_port(), str(data), str(tmp_path / "ddp"), str(weights), graph, gan), WORLD)
    return data, weights


def _vae_terms(run: Path) -> dict[tuple[int, str], float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {(row["step"], key): row[key] for row in rows if row.get("stage") == "vae" and "loss" in row
            for key in ("loss", "rec", "kl") if key in row}


@pytest.mark.parametrize("graph", [False, True], ids=["plain", "whole-step-graph"])
def test_two_gloo_ranks_match_one_process(tmp_path, graph):
    data, weights = _two_ranks(tmp_path, graph=graph, gan=False)

    # no DDP wrapper; where asked for, each step captured after its warm-up and replayed
    expected = "UNet 3, _Reconstruct 2" if graph else "UNet 0, _Reconstruct 0"
    assert [(weights / f"rank{r}.txt").read_text() for r in range(WORLD)] == [expected] * WORLD
    ranks = [torch.load(weights / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, tensor in ranks[0].items():
        assert torch.equal(tensor, ranks[1][name]), f"ranks disagree on {name}"

    run_training(_config(data), tmp_path / "single")
    single = load_training_state(tmp_path / "single" / "checkpoint.pt")
    ddp = load_training_state(tmp_path / "ddp" / "checkpoint.pt")
    assert ddp["step"] == single["step"] == STEPS
    for name, tensor in single["unet"].items():
        assert torch.allclose(ranks[0][name], tensor, rtol=0, atol=1e-6), name
        assert torch.allclose(ddp["unet"][name], tensor, rtol=0, atol=1e-6), name
    for name, tensor in single["vae"].items():
        assert torch.allclose(ddp["vae"][name], tensor, rtol=0, atol=1e-6), name
    # the VAE's logged loss terms are of the whole global batch, as its loss is (they were rank 0's half)
    logged = [_vae_terms(tmp_path / run) for run in ("single", "ddp")]
    assert logged[0].keys() == logged[1].keys() and logged[0]
    for key, value in logged[0].items():
        assert value == pytest.approx(logged[1][key], rel=1e-4, abs=1e-6), key
    # the comparison means something only if training moved the weights (from the UNet the
    # run built from its seed)
    torch.manual_seed(single["config"]["seed"])
    start = UNet(UNetConfig.from_dict(single["config"]["diffusion"]["model"])).state_dict()
    moved = max((single["unet"][k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-4


def test_two_gloo_ranks_agree_through_the_gan_phase(tmp_path):
    """The discriminator's gradients are averaged too, and every rank starts from rank 0's
    discriminator (each rank built its own from its own seed). Not compared with one process:
    the GAN's adaptive weight is taken from each rank's own batch, as it was under DDP."""
    _, weights = _two_ranks(tmp_path, graph=False, gan=True)
    ranks = [torch.load(weights / f"gan{r}.pt", weights_only=True) for r in range(WORLD)]
    for part in ("vae", "disc"):
        for name, tensor in ranks[0][part].items():
            assert torch.equal(tensor, ranks[1][part][name]), f"ranks disagree on {part}.{name}"
    assert [(weights / f"rank{r}.txt").read_text() for r in range(WORLD)] == ["UNet 0, _Reconstruct 0"] * WORLD
