"""Patch-GAN discriminator and the adversarial terms of the VAE stage.

The discriminator is the N-layer PatchGAN of pix2pix (Isola et al. 2017), as used by Esser et
al. 2021 and the LDM autoencoders: strided 4x4 convolutions that output one real/fake logit
per image patch. It normalises with GroupNorm rather than BatchNorm so that a patch's score
does not depend on the rest of its batch, which keeps runs on 1 or N processes (and resumed
runs) alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class PatchDiscriminator(nn.Module):
    """`[B, C, H, W]` images in [-1, 1] -> `[B, 1, H', W']` patch logits."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1  # the last block keeps the resolution
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        for module in self.modules():  # pix2pix init: N(0, 0.02) convolutions
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (Lim & Ye 2017): mean relu(1 - D(x)) + mean relu(1 + D(G(z))), halved."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's hinge term: -mean D(G(z))."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    recon_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, *, max_weight: float = 1e4
) -> torch.Tensor:
    """Esser et al. 2021, eq. 7: lambda = |grad_GL L_rec| / (|grad_GL L_GAN| + 1e-4).

    G_L is the decoder's last layer; balancing the two gradients there keeps the GAN term
    from swamping (or vanishing beside) the reconstruction term. Returned detached.
    """
    rec_grad = torch.autograd.grad(recon_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
