"""Convolutional VAE — the VAE objective of Kingma & Welling 2014 with the convolutional encoder/decoder shape of
Higgins et al. 2017 / Burgess et al. 2018 (4×4 stride-2 convolutions, a 256-unit fully connected layer, the
decoder the mirror image), scaled to 28×28 (two downsamplings to 7×7) and 32×32 (three, to 4×4).

The decoder is the dataset's observation model (baselines/common.py): Bernoulli over dynamically binarised pixels
for the MNIST family, a discretised logistic over 8-bit values for CIFAR-10. Adam(1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from baselines.common import LatentVariableModel, observation_model, upsampling_plan


@dataclass(frozen=True)
class Config:
    latent_dim: int = 32
    channels: int = 32  # width of the first convolution; doubles per downsampling
    hidden: int = 256  # the fully connected layer between the convolutions and the latent
    lr: float = 1e-3
    iwae_chunk: int = 100  # importance samples evaluated at once in log_likelihood (memory, not math)


class Encoder(nn.Module):
    def __init__(self, c, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, _ = image_shape
        base, n_down = upsampling_plan(height)
        layers: list[nn.Module] = []
        width_in = channels
        for i in range(n_down):
            width = c.channels * 2**i
            layers += [nn.Conv2d(width_in, width, 4, 2, 1), nn.ReLU(True)]
            width_in = width
        layers += [nn.Flatten(), nn.Linear(width_in * base * base, c.hidden), nn.ReLU(True)]
        layers += [nn.Linear(c.hidden, 2 * c.latent_dim)]  # (B, 2L): mu, logvar
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, c, image_shape: tuple[int, int, int], out_channels: int):
        super().__init__()
        _, height, _ = image_shape
        self.base, n_up = upsampling_plan(height)
        self.width = c.channels * 2 ** (n_up - 1)
        self.project = nn.Sequential(
            nn.Linear(c.latent_dim, c.hidden),
            nn.ReLU(True),
            nn.Linear(c.hidden, self.width * self.base * self.base),
            nn.ReLU(True),
        )
        layers: list[nn.Module] = []
        width = self.width
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, out_channels, 4, 2, 1)]  # (B, P·C, H, W) observation params
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]  # (B,) or (k, B) when importance sampling
        h = self.project(z).view(-1, self.width, self.base, self.base)
        out = self.net(h)
        return out.view(*lead, *out.shape[1:])


class ConvVAE(LatentVariableModel, nn.Module):
    Config = Config

    def __init__(self, config: Config, image_shape: tuple[int, int, int], observation: str = "bernoulli"):
        super().__init__()
        self.config, self.image_shape = config, image_shape
        self.observation = observation_model(observation)
        self.encoder = Encoder(config, image_shape)
        self.decoder = Decoder(config, image_shape, self.observation.params_per_channel * image_shape[0])

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        return self.elbo_step(x, optimizers)
