"""Spectrally normalised GAN — Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks".

The paper's "standard CNN" (appendix): a generator from a linear layer to a base×base×(8·ch) map, upsampled by 4×4
stride-2 deconvolutions with batch normalisation and ReLU to width ch, then a 3×3 convolution and tanh; a
discriminator of three (3×3 stride-1, 4×4 stride-2) convolution pairs of widths 64, 128, 256, a 3×3 convolution of
512, LeakyReLU(0.1) and a linear output, every weight spectrally normalised (one power iteration per forward pass,
torch's `spectral_norm` parametrisation, which normalises the reshaped (out, in·k·k) matrix as the paper does).
Hinge loss (Lim & Ye 2017; the paper's hinge variant); n_dis = 5 discriminator updates per generator update;
Adam(2e-4, β = (0, 0.9)), one of the Adam settings the paper compares, fixed here for every dataset. 28×28
inputs use a 7×7 base and two upsamplings; the discriminator maps them to 3×3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from baselines.common import ImageGenerator, critic_generator_step, descend, split_batches, upsampling_plan


@dataclass(frozen=True)
class Config:
    latent_dim: int = 128
    g_channels: int = 64  # width after the last upsampling; the base map has 2^upsamplings times as many
    d_channels: int = 64  # width of the first convolution pair; doubles per pair, 8× in the last convolution
    n_dis: int = 5
    lr: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9


class Generator(nn.Module):
    def __init__(self, c: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, _ = image_shape
        self.base, n_up = upsampling_plan(height)
        self.width = c.g_channels * 2**n_up
        self.project = nn.Linear(c.latent_dim, self.base * self.base * self.width)  # (B, base²·W)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.width), nn.ReLU(True)]
        width = self.width
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]  # (B, C, H, W) in [−1, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(-1, self.width, self.base, self.base))


class Discriminator(nn.Module):
    def __init__(self, c: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, size, _ = image_shape
        layers: list[nn.Module] = []
        width_in = channels
        for i in range(3):
            width = c.d_channels * 2**i
            layers += [spectral_norm(nn.Conv2d(width_in, width, 3, 1, 1)), nn.LeakyReLU(0.1, True)]
            layers += [spectral_norm(nn.Conv2d(width, width, 4, 2, 1)), nn.LeakyReLU(0.1, True)]
            width_in, size = width, (size + 2 - 4) // 2 + 1
        layers += [spectral_norm(nn.Conv2d(width_in, 8 * c.d_channels, 3, 1, 1)), nn.LeakyReLU(0.1, True)]
        layers += [nn.Flatten(), spectral_norm(nn.Linear(8 * c.d_channels * size * size, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B,)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 − D(x))] + E[max(0, 1 + D(G(z)))]."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


class SNGAN(ImageGenerator, nn.Module):
    Config = Config

    def __init__(self, config: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        self.batches_per_step = config.n_dis  # real batches the training loop hands to one train_step
        self.generator = Generator(config, image_shape)
        self.discriminator = Discriminator(config, image_shape)

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        """n_dis discriminator updates, one per real batch in x (n_dis·B, C, H, W) in [0, 1], then one generator
        update with the hinge generator loss −D(G(z))."""
        for real in split_batches(self.to_model_range(x), self.config.n_dis):
            with torch.no_grad():
                fake = self.generator(self.noise(len(real)))
            real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
            d_loss = hinge_d_loss(real_logits, fake_logits)
            descend(optimizers["d"], d_loss)

        g_loss = critic_generator_step(self, len(real), optimizers)
        return {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "d_real": real_logits.mean().detach(),
            "d_fake": fake_logits.mean().detach(),
        }
