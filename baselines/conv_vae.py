"""Convolutional VAE — the VAE objective of Kingma & Welling 2014 with the convolutional encoder/decoder shape of
Higgins et al. 2017 / Burgess et al. 2018 (4×4 stride-2 convolutions, a 256-unit fully connected layer, the
decoder the mirror image), scaled to 28×28 (two downsamplings to 7×7) and 32×32 (three, to 4×4).

The decoder is the dataset's observation model (baselines/common.py): Bernoulli over dynamically binarised pixels
for the MNIST family, a discretised logistic over 8-bit values for CIFAR-10. Adam(1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines.common import ConvLatentModel


@dataclass(frozen=True)
class Config:
    latent_dim: int = 32
    channels: int = 32  # width of the first convolution; doubles per downsampling
    hidden: int = 256  # the fully connected layer between the convolutions and the latent
    lr: float = 1e-3
    iwae_chunk: int = 100  # importance samples evaluated at once in log_likelihood (memory, not math)


class ConvVAE(ConvLatentModel):
    Config = Config

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        return self.elbo_step(x, optimizers)
