"""β-VAE — Higgins et al. 2017, "β-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework".

Trains on E_q[log p(x|z)] − β·KL(q(z|x) || p(z)) with β > 1, trading reconstruction (distortion) for a more
factorised, lower-rate code; the convolutional encoder/decoder of conv-vae (in baselines/common.py) with the paper's
10 latent units and Adam(1e-4). The training metrics report rate (KL, nats) and distortion (−log p(x|z), nats)
separately; the evaluated `elbo` and `nll_iwae` are the β = 1 quantities, so the likelihood columns stay comparable
across VAEs, and `rate`/`distortion` on the test split show where β moved the model on the rate–distortion plane
(Alemi et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines.common import ConvLatentModel


@dataclass(frozen=True)
class Config:
    beta: float = 4.0
    latent_dim: int = 10
    channels: int = 32
    hidden: int = 256
    lr: float = 1e-4
    iwae_chunk: int = 100


class BetaVAE(ConvLatentModel):
    """The conv-vae networks trained on the β-weighted objective."""

    Config = Config

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        return self.elbo_step(x, optimizers, beta=self.config.beta)  # logs rate and distortion apart
