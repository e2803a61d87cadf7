"""Capture and restore every random-number state a training step touches.

The states are stored in checkpoints loaded with `torch.load(weights_only=True)`, so they are
converted to plain lists and tensors: Python's `random.getstate()` is a tuple of ints (kept
as lists), torch's CPU and CUDA states are uint8 tensors. numpy's global RNG is not used by
the trainer and is therefore not captured.
"""
from __future__ import annotations

import random
from typing import Any

import torch


def capture_rng_state() -> dict[str, Any]:
    """Return the Python, torch CPU and (if present) CUDA RNG states as checkpoint-safe values."""
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by `capture_rng_state`.

    CUDA states are restored only when the number of visible devices matches, since a state
    list cannot be mapped onto a different set of GPUs.
    """
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    torch.set_rng_state(state["torch_cpu"].cpu().to(torch.uint8))
    cuda_states = state.get("torch_cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda_states])


def generator_state(generator: torch.Generator) -> torch.Tensor:
    """The state of a `torch.Generator` as a CPU uint8 tensor (checkpoint-safe)."""
    return generator.get_state().cpu()


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A seeded generator on `device` (CUDA generators draw CUDA tensors without host syncs)."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen
