"""What a training stage is given by `run_training`, and the checkpoint pieces both share."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ldmkit.train.config import RunConfig
from ldmkit.train.distributed import DistInfo, barrier, gather_objects
from ldmkit.train.logger import TrainLogger
from ldmkit.train.rng import capture_rng_state, restore_rng_state
from ldmkit.train.signals import StopSignal


@dataclass
class StageContext:
    """A run's shared facilities: its folder, processes, stop flag and checkpoint writer.

    `save_state(stage_state)` writes RUN/checkpoint.pt on rank 0 (adding the run config and
    whatever the run level owns) and then waits at a barrier, so no rank races ahead of a
    checkpoint that is still being written. Every rank must call it.
    """

    run_dir: Path
    config: RunConfig
    dist: DistInfo
    stop: StopSignal
    save_state: Callable[[dict[str, Any]], None]

    def logger(self, stage: str, total_steps: int, start_step: int, *, bar: bool = True) -> TrainLogger:
        """A rank-0 logger for one stage (`bar=False`: messages only, no progress bar)."""
        return TrainLogger(
            self.run_dir, stage=stage, total_steps=total_steps, start_step=start_step,
            quiet=self.config.quiet or not bar, enabled=self.dist.is_main,
        )

    def barrier(self) -> None:
        barrier(self.dist)


def rank_rng_states(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's global RNG state (rank order), gathered so rank 0 can save them all."""
    return gather_objects(capture_rng_state(), dist)  # type: ignore[return-value]


def restore_rank_rng(states: list[dict[str, Any]], dist: DistInfo) -> bool:
    """Restore this rank's RNG state; False (nothing restored) if the world size changed. Callers
    go on either way: these per-rank streams drive only what is not drawn for the global batch
    (dropout, 0 in every preset), and a resume on another number of processes keeps the streams
    each rank was seeded with (distributed.seed_everything)."""
    if len(states) != dist.world_size:
        return False
    restore_rng_state(states[dist.rank])
    return True


def global_draw(draw: Callable[[], torch.Tensor], dist: DistInfo) -> torch.Tensor:
    """Draw a global-batch tensor (the same on every rank) and keep this rank's slice.

    Every random choice of a training step (noise, timesteps, flips, dropped labels) is drawn
    for the whole global batch from a generator that is identical on all ranks, so the run
    is the same on 1 or N processes and the generator state is the only state to resume.
    """
    full = draw()
    per_rank = full.shape[0] // dist.world_size
    return full[dist.rank * per_rank : (dist.rank + 1) * per_rank]
