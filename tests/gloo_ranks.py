"""Start a test's ranks (gloo on the CPU, torchrun's variables set by each rank) as processes
forked from one clean server.

`mp.spawn` starts every rank as a new interpreter that imports torch, ldmkit, the test's module
and torch._dynamo (which the first AdamW imports) again: several seconds a rank on a 2-core
machine, paid by every spawn (the six tests that start ranks took 116 s of the suite's 742 there,
30 s forked). A forkserver pays those imports once, in a
process that has run nothing else, so its forks start as fresh as spawned processes do (no
threads, none of the pytest process's patched globals or RNG state) but without the imports.
"""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable

import torch.multiprocessing as mp

# Imported once by the server: torch's and ldmkit's modules, and the tests whose rank functions run
# in it (a module that fails to import here is imported by the rank itself, as under spawn).
_PRELOAD = ["torch", "torch._dynamo", "ldmkit.train", "test_ddp", "test_ddp_resume", "test_train_run_ddp"]


def run_ranks(rank_main: Callable[..., None], args: tuple[Any, ...], nprocs: int) -> None:
    """`rank_main(rank, *args)` in `nprocs` processes; raises if any of them fails."""
    multiprocessing.set_forkserver_preload(_PRELOAD)  # read when the server starts, at the first call
    mp.start_processes(rank_main, args=args, nprocs=nprocs, join=True, start_method="forkserver")
