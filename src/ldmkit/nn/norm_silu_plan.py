"""How the GroupNorm kernels split their work; plain Python, importable without Triton (the
operators' shape functions use it while a graph is traced)."""

from __future__ import annotations

import math

import torch

# Enough programs to fill an H100's 132 SMs several times over before a sample's pixels are split.
_TARGET_PROGRAMS = 1024

# Splits are whole multiples of 128 pixels (a multiple of the tile's pixel block for NCHW, and
# for channels_last from 16 channels up; below that the kernels' masks cover the remainder), and
# they depend on the shape alone: the partial results' shape must not change with the layout, which
# inductor may choose after the graph (and these shapes) are traced.
SPLIT_UNIT = 128


def pixel_splits(N: int, C: int, HW: int) -> tuple[int, int]:
    """(pixels per split, number of splits): a sample's pixels are split only as far as needed
    for about _TARGET_PROGRAMS programs, counted at 64 channels each (the channels_last tile's
    width; an NCHW tile holds 16 or more)."""
    units = math.ceil(HW / SPLIT_UNIT)
    want = max(1, min(units, math.ceil(_TARGET_PROGRAMS / (N * math.ceil(C / 64)))))
    per_split = math.ceil(units / want) * SPLIT_UNIT
    return per_split, math.ceil(HW / per_split)


def empty_partials(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two uninitialised float32 `[N, C, S]` tensors for a kernel's per-split results on x
    ([N, C, H, W]); the same shapes in the operators' shape functions and at run time."""
    N, C, H, W = x.shape
    _, splits = pixel_splits(N, C, H * W)
    out = x.new_empty((N, C, splits), dtype=torch.float32)
    return out, torch.empty_like(out)
