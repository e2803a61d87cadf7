"""The VAE stage's GAN phase: its adaptive weight differentiates the last decoder layer alone.

Esser et al.'s weight (eq. 7) needs the gradients of two losses with respect to the decoder's final
convolution. A backward that starts inside a torch.compile'd graph runs that graph's whole backward
(AOTAutograd cannot prune it: on the CPU the emoji VAE's gradient for its last layer cost as much as
its full backward, compiled, and 4% of it eagerly), so the trainer applies that convolution outside
the compiled forward; the model's backward then runs once a step, as without the GAN.
"""
from __future__ import annotations

import torch
from torch import nn

from ldmkit.train.vae_stage import _Reconstruct
from test_step_graph import _vae_trainer


class _CountBackward(torch.autograd.Function):
    """Identity whose backward counts its calls."""

    calls = 0

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        _CountBackward.calls += 1
        return grad


class _Counted(nn.Module):
    """The trainer's model with its output passed through `_CountBackward`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, kl = self.model(images, eps)
        return _CountBackward.apply(out), kl


def test_the_gan_phase_runs_the_models_backward_once_a_step(tmp_path):
    trainer = _vae_trainer(tmp_path, graph=False, gan=True)  # the GAN from step 3
    trainer.model = _Counted(trainer.model)
    images = torch.rand((4, 3, 16, 16), generator=torch.Generator().manual_seed(3)) * 2 - 1
    backwards, gan_weights = [], []
    for _ in range(5):
        before = _CountBackward.calls
        out = trainer.train_step(images)
        backwards.append(_CountBackward.calls - before)
        gan_weights.append(out.get("gan_weight"))
    assert backwards == [1] * 5  # the weight's two gradients stopped at the last layer
    assert gan_weights[:3] == [None] * 3 and all(w is not None and float(w) > 0 for w in gan_weights[3:])


def test_the_reconstruction_is_the_same_function_split_or_whole(tmp_path):
    trainer = _vae_trainer(tmp_path, graph=False)
    vae = trainer.vae
    images = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(4)) * 2 - 1
    eps = torch.randn((2, *trainer.latent_shape), generator=torch.Generator().manual_seed(5))
    whole, kl_whole = _Reconstruct(vae)(images, eps)
    features, kl_split = _Reconstruct(vae, last_conv=False)(images, eps)
    assert features.shape[1] == vae.decoder.conv_out.in_channels
    torch.testing.assert_close(vae.decoder.conv_out(features), whole, rtol=0, atol=0)
    torch.testing.assert_close(kl_split, kl_whole, rtol=0, atol=0)
