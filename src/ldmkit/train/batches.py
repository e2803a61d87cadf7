"""Which examples go into each batch: a seeded, resumable order, the same on every rank.

The training data is read as one endless stream: the concatenation of a fresh seeded
permutation per epoch. A global batch is the next `batch_size` entries of the stream, and
rank r of W takes the r-th contiguous slice of it. The whole data position is therefore one
integer, `offset` (examples consumed so far; epoch = offset // N, index = offset % N), and a
run resumed from a checkpoint, or run on a different number of processes, sees exactly the
same global batches.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from ldmkit.errors import UserError


def to_device_without_sync(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` (on the CPU) on `device`. A plain host-to-GPU copy from pageable memory waits for
    the GPU to drain its queue; through pinned memory the copy is queued like a kernel, so a
    training step that moves its batch indices does not stall the host (see StepGuard)."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class IndexStream:
    """The endless stream of dataset indices for `num_items` examples and a seed."""

    def __init__(self, num_items: int, seed: int, device: torch.device | str = "cpu") -> None:
        if num_items < 1:
            raise UserError("the training set is empty")
        self.num_items = num_items
        self.seed = seed
        self.device = torch.device(device)
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch `epoch` (cached: consecutive batches mostly share an epoch)."""
        if epoch != self._epoch:
            # modulo 2**64, as torch reduces a negative seed: a large --seed overflowed here
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
            self._perm = to_device_without_sync(torch.randperm(self.num_items, generator=gen), self.device)
            self._epoch = epoch
        return self._perm

    def take(self, offset: int, count: int) -> torch.Tensor:
        """Stream entries `offset .. offset + count - 1` (may span several epochs)."""
        parts = []
        while count > 0:
            epoch, index = divmod(offset, self.num_items)
            part = self.permutation(epoch)[index : index + count]
            parts.append(part)
            offset += len(part)
            count -= len(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def rank_slice(global_batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s contiguous share of a global batch (the size divides evenly)."""
    per_rank = global_batch.shape[0] // world_size
    return global_batch[rank * per_rank : (rank + 1) * per_rank]


VAE_BATCH_SETTING = "the VAE stage's batch size (--set vae.batch_size=N)"
DIFFUSION_BATCH_SETTING = "the UNet stage's batch size (--batch-size)"


def per_rank_batch(batch_size: int, world_size: int, what: str = DIFFUSION_BATCH_SETTING) -> int:
    """The per-process batch, or a UserError naming `what` (which stage's, which flag sets it) if
    the global batch cannot be split evenly."""
    if batch_size % world_size != 0:
        raise UserError(f"{what}, {batch_size}, is the global batch and must divide evenly over {world_size} processes")
    return batch_size // world_size


class StreamBatchSampler(Sampler[list[int]]):
    """A DataLoader `batch_sampler` reading this rank's slices of the stream from `offset`.

    Endless: the training loop stops after its number of steps. Because the DataLoader
    prefetches, the loop tracks the position itself (offset + steps * batch_size).
    """

    def __init__(self, stream: IndexStream, *, offset: int, batch_size: int, rank: int, world_size: int) -> None:
        self.stream = stream
        self.offset = offset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[list[int]]:
        offset = self.offset
        while True:
            batch = self.stream.take(offset, self.batch_size)
            offset += self.batch_size
            yield rank_slice(batch, self.rank, self.world_size).tolist()

    def __len__(self) -> int:  # DataLoader asks; the stream has no end
        return 2**62
