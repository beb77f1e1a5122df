"""Variational autoencoder with MLPs — Kingma & Welling 2014, "Auto-Encoding Variational Bayes".

The paper's MNIST model: one tanh hidden layer of 500 units in encoder and decoder, a diagonal Gaussian posterior,
a standard normal prior, the reparameterisation trick and the analytic KL term (appendix B). The decoder is the
dataset's observation model (baselines/common.py): Bernoulli over dynamically binarised pixels for the MNIST family
(the convention under which test NLLs are comparable, Burda et al. 2016), a discretised logistic over 8-bit values
for CIFAR-10. Optimiser: Adam(1e-3) instead of the paper's Adagrad.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from baselines.common import LatentVariableModel, observation_model


@dataclass(frozen=True)
class Config:
    latent_dim: int = 20
    hidden: int = 500
    lr: float = 1e-3
    iwae_chunk: int = 100  # importance samples evaluated at once in log_likelihood (memory, not math)


class VAEMLP(LatentVariableModel, nn.Module):
    Config = Config

    def __init__(self, config: Config, image_shape: tuple[int, int, int], observation: str = "bernoulli"):
        super().__init__()
        self.config, self.image_shape = config, image_shape
        self.observation = observation_model(observation)
        c, h, w = image_shape
        d = c * h * w
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, config.hidden),
            nn.Tanh(),  # (B, 500)
            nn.Linear(config.hidden, 2 * config.latent_dim),  # (B, 2L): mu, logvar
        )
        p = self.observation.params_per_channel
        self.decoder = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden),
            nn.Tanh(),  # (B, 500)
            nn.Linear(config.hidden, p * d),
            nn.Unflatten(-1, (p * c, h, w)),  # (B, P·C, H, W) observation params
        )

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        return self.elbo_step(x, optimizers)
