"""Deep convolutional GAN — Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks".

The paper's architecture guidelines (section 3): strided convolutions instead of pooling, fractionally strided
convolutions in the generator, batch normalisation in both networks except the generator's output and the
discriminator's input layer, ReLU in the generator with a tanh output, LeakyReLU(0.2) in the discriminator, no
fully connected hidden layers. Training (section 4): Adam(2e-4, β1 = 0.5), weights ~ N(0, 0.02), images in [−1, 1].
The generator's depth follows the image size: 32×32 starts at 4×4 and doubles three times (as in the paper's
64×64 model, one step shorter); 28×28 starts at 7×7 and doubles twice. Loss: the non-saturating GAN loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from baselines.common import ImageGenerator, dcgan_init, upsampling_plan
from baselines.gan_mlp import nonsaturating_step


@dataclass(frozen=True)
class Config:
    latent_dim: int = 100
    g_channels: int = 64  # width of the generator's last hidden layer; doubles towards the latent
    d_channels: int = 64  # width of the discriminator's first layer; doubles per downsampling
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999


class Generator(nn.Module):
    def __init__(self, c: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, _ = image_shape
        base, n_up = upsampling_plan(height)
        width = c.g_channels * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(c.latent_dim, width, base, 1, 0, bias=False),  # (B, W, base, base)
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):  # each doubles the resolution and halves the width
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2)]
            layers += [nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]  # (B, C, H, W) in [−1, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """Strided convolutions to a single logit; `batchnorm=False` gives WGAN-GP's critic (Gulrajani et al. 2017)."""

    def __init__(self, c: Config, image_shape: tuple[int, int, int], batchnorm: bool = True):
        super().__init__()
        channels, height, _ = image_shape
        base, n_down = upsampling_plan(height)
        width = c.d_channels
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]  # no BN on input
        for _ in range(n_down - 1):
            norm = nn.BatchNorm2d(width * 2) if batchnorm else nn.Identity()
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=not batchnorm), norm, nn.LeakyReLU(0.2, True)]
            width *= 2
        # (B, 1, 1, 1) logit of "real"; a critic's output bias cancels in D(x) − D(G(z)) and gets no gradient
        layers += [nn.Conv2d(width, 1, base, 1, 0, bias=batchnorm)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B,)


class DCGAN(ImageGenerator, nn.Module):
    Config = Config

    def __init__(self, config: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        self.generator = Generator(config, image_shape)
        self.discriminator = Discriminator(config, image_shape)
        dcgan_init(self)

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        return nonsaturating_step(self, x, optimizers)
