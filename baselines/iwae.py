"""Importance-weighted autoencoder — Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders".

Trained on the k-sample bound L_k = E[log (1/k) Σ_i p(x, z_i) / q(z_i|x)] (eq. 8), k = 50, which tightens with k
(theorem 1) and equals the ELBO at k = 1. The paper's one-stochastic-layer MNIST architecture (appendix C): encoder
and decoder with two deterministic tanh layers of 200 units and 50 latent units; Adam(1e-3, β = (0.9, 0.999),
ε = 1e-4), without the paper's 3^i-epoch learning-rate decay (the suites' budgets are far shorter). The decoder is
the dataset's observation model (baselines/common.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from baselines.common import LatentVariableModel, descend, observation_model


@dataclass(frozen=True)
class Config:
    k: int = 50  # importance samples in the training objective
    latent_dim: int = 50
    hidden: int = 200
    lr: float = 1e-3
    eps: float = 1e-4
    iwae_chunk: int = 100


class IWAE(LatentVariableModel, nn.Module):
    Config = Config

    def __init__(self, config: Config, image_shape: tuple[int, int, int], observation: str = "bernoulli"):
        super().__init__()
        self.config, self.image_shape = config, image_shape
        self.observation = observation_model(observation)
        c, h, w = image_shape
        p = self.observation.params_per_channel
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, config.hidden),
            nn.Tanh(),
            nn.Linear(config.hidden, config.hidden),
            nn.Tanh(),  # (B, 200)
            nn.Linear(config.hidden, 2 * config.latent_dim),  # (B, 2L): mu, logvar
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden),
            nn.Tanh(),
            nn.Linear(config.hidden, config.hidden),
            nn.Tanh(),  # (B, 200)
            nn.Linear(config.hidden, p * c * h * w),
            nn.Unflatten(-1, (p * c, h, w)),  # (B, P·C, H, W) observation params
        )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam with the paper's ε = 1e-4 (Burda et al. 2016, appendix C)."""
        return {"vae": torch.optim.Adam(self.parameters(), lr=self.config.lr, eps=self.config.eps)}

    def iwae_bound(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """L_k per image, differentiable: logsumexp of k log importance weights − log k."""
        return torch.logsumexp(self.log_weights(x, k), dim=0) - math.log(k)

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        bound = self.iwae_bound(self.observe(x), self.config.k).mean()
        descend(optimizers["vae"], -bound)
        return {"loss": -bound.detach()}
