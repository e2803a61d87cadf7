"""One CUDA graph over a whole training step: forward, backward, clipping, AdamW, the EMA.

Used by the diffusion stage and by the VAE stage where it trains without the patch GAN (whose
adaptive weight differentiates the decoder twice and whose discriminator is a second optimizer).

Why: torch.compile's "reduce-overhead" replays the UNet's forward and backward as CUDA graphs,
but the rest of the step (clipping, the fused AdamW, the EMA, the skip decision; ~40 launches)
and the graph trees' own Python run on the host every step. The emoji UNet's step (batch 256)
keeps the GPU busy 6.8-7.0 ms and took 8.8-17.5 ms of wall time, depending on the process and
the machine: the host was the bottleneck. Captured by hand as one graph it ran at 6.87 ms on the
same machine where the shipped step took 10.89 (benchmarks/NOTES.md, v15).

How (the recipe of PyTorch's CUDA graphs notes, "whole network capture"):
- the first `warmup` steps run as plain calls, on a side stream: they compile the model, create
  the optimizer's state and the libraries' workspaces; each is a real training step;
- the next step is captured once, reading its inputs from static tensors, and replayed;
- from then on the host copies each batch into the static inputs and replays: a handful of
  launches a step. Every output is a static tensor the next replay overwrites, so callers copy
  what they keep.
The step itself must start by setting the gradients to None (so the captured backward writes
fresh ones from the graph's pool) and read anything that changes between steps, such as the
learning rate, from device tensors.

If the capture fails (an operation that cannot be captured, such as a host read), the step runs
as plain calls from then on, after one warning.

On by default (`ldm train --no-step-graph` turns it off). `benchmarks/step_graph_check.py` trains
`ldm train`'s trainers both ways on one H200 (NOTES v16): emoji UNet 6.91 ms a step against 14.70
(2.1x), base UNet 38.28 against 38.49 ms; emoji VAE 4.77 against 6.87 ms (1.44x), fashion-mnist
VAE 4.93 against 5.17 ms; the same losses and updates in every case (relative difference of the
weights' change at most 6e-9); peak allocated memory +0.04 to +0.11 GiB. On the CPU the host's
side of it is tested against a stand-in for the graph (tests/test_step_graph.py).

Under torchrun the graph also holds the gradients' all-reduce (grad_sync.py). On two H200s (NOTES
v17) the emoji UNet's step took 5.68 ms against 22.01 plain (3.9x; one GPU: 6.91), its VAE's 3.80
against 7.36, with the same losses and updates, and every rank ended with the same weights. A
capture that failed on one rank only would leave the ranks' collectives unmatched; what makes a
capture fail is the code, which is the same on every rank.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch

from ldmkit.train.config import RunConfig
from ldmkit.train.distributed import DistInfo
from ldmkit.train.step_compile import compiles_for_training

WARMUP_STEPS = 3


def step_graph_wanted(run: RunConfig, dist: DistInfo) -> bool:
    """Whether a stage captures its whole step: `step_graph` on (the default; `ldm train
    --no-step-graph` turns it off), with CUDA graphs (`compile_mode` "reduce-overhead", the GPU presets' default)
    where the step is compiled, bf16 or fp32 (fp16's GradScaler decides on the host). Under
    torchrun too: the graph then holds the gradients' all-reduce (grad_sync.py)."""
    return (run.step_graph and run.compile_mode == "reduce-overhead"
            and run.precision != "fp16" and compiles_for_training(run, dist))


def release_training_memory(optimizer: torch.optim.Optimizer, step_graph: "StepGraph | None") -> None:
    """At the end of a stage: drop the gradients and the captured step (its graph, and with it the
    memory pool the graph holds), so what comes next (the diffusion stage after the VAE's, the
    caller's generation after `run_training`) has that memory back. The trainer object may live
    on in a reference cycle (the graph calls the trainer's method) until the garbage collector
    runs; this does not wait for it."""
    if step_graph is not None:
        step_graph.reset()
    optimizer.zero_grad(set_to_none=True)  # captured gradients live in the graph's pool
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class DeviceLR:
    """The learning rate of `optimizer` as a device tensor, for a step that is captured: a float
    would be frozen into the graph, a tensor is read by the replayed AdamW. `set(lr)` writes it
    (a kernel, no host sync); `optimizer_state()` is the optimizer's state as a plain step keeps
    it (a float LR, `capturable` off), so a checkpoint reads the same whichever step wrote it.
    Until the first `set` the optimizer is left as it is."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.tensor: torch.Tensor | None = None
        self.value: float | None = None

    def set(self, lr: float) -> None:
        if self.tensor is None:
            self.tensor = torch.tensor(float(lr), device=self.optimizer.param_groups[0]["params"][0].device)
        for group in self.optimizer.param_groups:  # again after a loaded state replaced the groups
            if group["lr"] is not self.tensor:
                group["lr"] = self.tensor
                group["capturable"] = True  # the optimizer refuses to be captured otherwise
        self.tensor.fill_(lr)
        self.value = lr

    def optimizer_state(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        if self.tensor is not None:
            for group in state["param_groups"]:  # copies: the live groups keep their tensor
                group["lr"], group["capturable"] = self.value, False
        return state


class CudaGraph:
    """What `StepGraph` needs of a graph: record a function once, replay it."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def record(self, fn: Callable[[], Any]) -> Any:
        """`fn`'s outputs; its work is recorded, not run (the first replay runs it)."""
        # thread_local: CUDA calls of other threads (a logger, a writer) do not end the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            return fn()

    def replay(self) -> None:
        self.graph.replay()


class StepGraph:
    """`step(*inputs)`: a plain call for the first `warmup` steps, then replays of one capture
    (see the module doc). Inputs are tensors (or None, passed as is) of the same shapes every
    step; `step` returns a tuple of tensors."""

    def __init__(self, step: Callable[..., Sequence[torch.Tensor]], *, warmup: int = WARMUP_STEPS,
                 new_graph: Callable[[], Any] = CudaGraph) -> None:
        self.step = step
        self.warmup = warmup
        self.new_graph = new_graph
        self.calls = 0
        self.graph: Any = None
        self.failed: str | None = None  # why the capture failed, if it did
        self._inputs: list[torch.Tensor | None] = []
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._side: Any = None  # the CUDA stream of the plain calls
        self._announced = False

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def reset(self) -> None:
        """Drop the capture (its static tensors may no longer be the step's): the next steps
        warm up and capture again."""
        self.calls, self.graph, self._inputs, self._outputs, self._announced = 0, None, [], (), False

    def announce(self, step: int) -> str | None:
        """Once per capture, at the first call after it: the log line saying from which training
        step (`step`, the trainer's count) the step replays as one graph; else None."""
        if self.graph is None or self._announced:
            return None
        self._announced = True
        return f"step {step} on: the step replays as one CUDA graph (--no-step-graph turns this off)"

    def __call__(self, *inputs: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        self.calls += 1
        if self.graph is None:
            if self.failed is not None or self.calls <= self.warmup:
                return tuple(self._plain(inputs))
            if not self._capture(inputs):
                return tuple(self._plain(inputs))
        else:
            for static, value in zip(self._inputs, inputs):
                if static is not None:
                    static.copy_(value, non_blocking=True)
        self.graph.replay()
        return self._outputs

    def _plain(self, inputs: Sequence[torch.Tensor | None]) -> Sequence[torch.Tensor]:
        """One plain call; on CUDA on a side stream, as the capture will run (see module doc)."""
        if not torch.cuda.is_available() or not any(x is not None and x.is_cuda for x in inputs):
            return self.step(*inputs)
        if self._side is None:
            self._side = torch.cuda.Stream()
        side, here = self._side, torch.cuda.current_stream()
        side.wait_stream(here)
        with torch.cuda.stream(side):
            outputs = self.step(*inputs)
        here.wait_stream(side)
        return outputs

    def _capture(self, inputs: Sequence[torch.Tensor | None]) -> bool:
        """Record the step on static copies of `inputs`; False (and a warning) if it cannot be."""
        self._inputs = [x.clone() if x is not None else None for x in inputs]
        graph = self.new_graph()
        try:
            self._outputs = tuple(graph.record(lambda: self.step(*self._inputs)))
        except Exception as err:  # a capture error leaves the model untouched: nothing ran
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            self._inputs, self._outputs = [], ()
            warnings.warn(f"the training step could not be captured as one CUDA graph ({self.failed}); "
                          "training goes on without it (slower on small models); `ldm train "
                          "--no-step-graph` skips the attempt.", RuntimeWarning, stacklevel=3)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return False
        self.graph = graph
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the plain steps' cached blocks: the graph has its own pool now
        return True
