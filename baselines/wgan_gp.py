"""Wasserstein GAN with gradient penalty — Gulrajani et al. 2017, "Improved Training of Wasserstein GANs".

Algorithm 1 of the paper: the critic minimises D(G(z)) − D(x) + λ (‖∇D(x̂)‖₂ − 1)² on random interpolates x̂ of real
and generated images, λ = 10, n_critic = 5 critic updates per generator update, Adam(1e-4, β = (0, 0.9)); the
generator minimises −D(G(z)). No batch normalisation in the critic (section 4: it would make the penalty's
per-sample gradients invalid). Networks: the DCGAN generator and a BN-free DCGAN critic (baselines/dcgan.py), the
paper's DCGAN-style setting rather than its 101-layer ResNet.

One training step = one generator update, as the paper counts iterations; it consumes n_critic real batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from baselines.common import (
    DCDiscriminator,
    DCGenerator,
    ImageGenerator,
    critic_generator_step,
    dcgan_init,
    descend,
    split_batches,
)


@dataclass(frozen=True)
class Config:
    latent_dim: int = 128
    g_channels: int = 64
    d_channels: int = 64
    gp_weight: float = 10.0  # λ
    n_critic: int = 5
    lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.9


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """E[(‖∇D(x̂)‖₂ − 1)²] at x̂ = ε·x + (1 − ε)·x̃, ε per sample (B, 1, 1, 1); differentiable (create_graph)."""
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


class WGANGP(ImageGenerator, nn.Module):
    Config = Config

    def __init__(self, config: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        self.batches_per_step = config.n_critic  # real batches the training loop hands to one train_step
        self.generator = DCGenerator(config, image_shape)
        self.discriminator = DCDiscriminator(config, image_shape, batchnorm=False)
        dcgan_init(self)

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        """n_critic critic updates, one per real batch in x (n_critic·B, C, H, W) in [0, 1], then one generator
        update."""
        c = self.config
        for real in split_batches(self.to_model_range(x), c.n_critic):
            with torch.no_grad():
                fake = self.generator(self.noise(len(real)))
            eps = torch.rand(len(real), 1, 1, 1, device=real.device)
            wasserstein = self.discriminator(real).mean() - self.discriminator(fake).mean()  # critic's estimate
            gp = gradient_penalty(self.discriminator, real, fake, eps)
            d_loss = -wasserstein + c.gp_weight * gp
            descend(optimizers["d"], d_loss)

        g_loss = critic_generator_step(self, len(real), optimizers)
        return {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "wasserstein": wasserstein.detach(),
            "gp": gp.detach(),
        }
