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

from baselines.common import DCDiscriminator, DCGenerator, ImageGenerator, dcgan_init, nonsaturating_step


@dataclass(frozen=True)
class Config:
    latent_dim: int = 100
    g_channels: int = 64  # width of the generator's last hidden layer; doubles towards the latent
    d_channels: int = 64  # width of the discriminator's first layer; doubles per downsampling
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999


class DCGAN(ImageGenerator, nn.Module):
    Config = Config

    def __init__(self, config: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        self.generator = DCGenerator(config, image_shape)
        self.discriminator = DCDiscriminator(config, image_shape)
        dcgan_init(self)

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        return nonsaturating_step(self, x, optimizers)
