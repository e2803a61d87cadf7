"""The stop request (Ctrl-C, SIGTERM, --time-limit) for work between the stages: the encoding of
the latent cache, which has no StepGuard to settle on.

Encoding a large dataset takes minutes, and a signal handler only sets a flag (signals.py): a
Ctrl-C used to go unanswered until the whole set was encoded, and then one diffusion step ran
before the stop was seen. `check_stop` is called between encoding batches and raises
`TrainingStopped`, which `run_training` turns into the usual stop (nothing is lost: the VAE is
saved, and the cache is rebuilt on resume). Under torchrun the ranks must stop at the same batch,
or one waits forever in the gathering of the shards: the check is then an all-reduce, and every
rank makes the same number of checks.
"""
from __future__ import annotations

import torch

from ldmkit.train.distributed import DistInfo, all_reduce_sum
from ldmkit.train.signals import RELAYED_STOP, StopSignal


class TrainingStopped(Exception):
    """A stop request was agreed on outside the stages' loops (the run's StopSignal names why)."""


def stop_agreed(stop: StopSignal, dist: DistInfo) -> bool:
    """Whether any rank was asked to stop (every rank must call it: one all-reduce under torchrun)."""
    if not dist.distributed:
        return stop.requested
    flag = torch.tensor([float(stop.requested)], device=dist.device)
    if all_reduce_sum(flag, dist).item() > 0:
        stop.request(RELAYED_STOP)  # the name of a stop asked for here stays
        return True
    return False


def check_stop(stop: StopSignal | None, dist: DistInfo) -> None:
    """Raise TrainingStopped if `stop` is agreed on; no-op without one."""
    if stop is not None and stop_agreed(stop, dist):
        raise TrainingStopped(stop.signal_name)
