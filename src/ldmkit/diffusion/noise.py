"""Per-sample seeded Gaussian noise.

Each sample of a batch owns a CPU `torch.Generator` seeded with its own seed, and every
draw takes the next values from each generator in turn. So image k depends only on seed k:
the same seed gives the same image in a batch of 1 or of 64, at any position, and on CPU or
CUDA (the values are always drawn on the CPU in float32, then moved and cast), the way EDM2's
generate script draws its per-seed latents.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from ldmkit.errors import UserError


class SeededNoise:
    """A stream of standard-normal batches whose row k comes from `seeds[k]`.

    Args:
        seeds: one integer seed per sample (repeats allowed: they give identical rows).
        shape_per_sample: shape of one sample, e.g. (C, H, W).
        device, dtype: where and how each drawn batch is returned.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        shape_per_sample: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        seeds = [_seed(seed) for seed in seeds]
        if not seeds:
            raise UserError("SeededNoise needs at least one seed")
        self.seeds = seeds
        self.shape = tuple(int(n) for n in shape_per_sample)
        self.device = torch.device(device)
        self.dtype = dtype
        self._generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Shape of one drawn batch: (len(seeds), *shape_per_sample)."""
        return (len(self.seeds),) + self.shape

    def draw(self) -> Tensor:
        """Next standard-normal batch; row k advances only generator k."""
        # Always float32 on the CPU: the stream must not depend on the target dtype or device.
        rows = [torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self._generators]
        batch = torch.stack(rows)
        if self.device.type == "cuda":
            # Pinned memory + non_blocking: the copy is queued on the stream instead of making
            # the host wait for the GPU, so drawing inside a sampler loop never syncs.
            return batch.pin_memory().to(self.device, non_blocking=True).to(self.dtype)
        return batch.to(device=self.device, dtype=self.dtype)

    def draw_like(self, x: Tensor) -> Tensor:
        """Next batch, checked against (and placed like) the sample `x`."""
        if tuple(x.shape) != self.batch_shape:
            raise UserError(
                f"noise stream has shape {self.batch_shape} (one row per seed) but the sample is "
                f"{tuple(x.shape)}"
            )
        return self.draw().to(device=x.device, dtype=x.dtype)


def _seed(seed: object) -> int:
    """A seed as an int: Python's or numpy's integers in [0, 2**63), never a bool."""
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not 0 <= value < 2**63:
        raise UserError(f"seeds must be integers in [0, 2**63), got {seed!r}")
    return value
