"""The VAE stage's GAN step on the CPU, compiled, before and after v18's change (NOTES.md v18).

Before v18 the adaptive weight's two gradients for the decoder's last layer entered the compiled
forward, whose backward then ran whole; v18 applies that layer outside it. Both forms are built
here from the tests' tiny VAE trainer (`tests/test_step_graph.py`'s `_vae_trainer`, the GAN from
the first step), each compiled with inductor, and timed over 10 steps after 3.

    PYTHONPATH=src python3 benchmarks/gan_weight_cpu.py        # from the repository root
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_step_graph import _vae_trainer  # noqa: E402

from ldmkit.train.vae_stage import _Reconstruct  # noqa: E402


class _Identity(nn.Module):
    """Stands in for the last layer when the compiled forward applies it (the old form)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def ms_per_step(form: str, steps: int = 10) -> float:
    trainer = _vae_trainer(Path(tempfile.mkdtemp()), graph=False, gan=True)
    trainer.cfg.disc_start = 0
    if form == "before":
        trainer.model = torch.compile(_Reconstruct(trainer.vae))
        trainer.last_layer = _Identity(trainer.vae.decoder.conv_out)
    else:
        trainer.model = torch.compile(_Reconstruct(trainer.vae, last_conv=False))
    images = torch.rand((4, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
    for _ in range(3):
        trainer.train_step(images)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images)
    return (time.perf_counter() - start) / steps * 1000


if __name__ == "__main__":
    for form in ("before", "after"):
        print(f"{form}: {ms_per_step(form):.1f} ms a step")
