"""Variational autoencoder with MLPs — Kingma & Welling 2014, "Auto-Encoding Variational Bayes".

The paper's MNIST model: one tanh hidden layer of 500 units in encoder and decoder, a diagonal Gaussian posterior,
a standard normal prior, the reparameterisation trick and the analytic KL term (appendix B), and a Bernoulli decoder.
Pixels are binarised dynamically (a fresh Bernoulli draw per step), the convention under which test NLLs on the
MNIST family are comparable (Burda et al. 2016). Optimiser: Adam(1e-3) instead of the paper's Adagrad.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from baselines.common import bernoulli_log_prob, binarize, gaussian_kl, normal_log_prob, to_uint8


@dataclass(frozen=True)
class Config:
    latent_dim: int = 20
    hidden: int = 500
    lr: float = 1e-3
    iwae_chunk: int = 100  # importance samples evaluated at once in log_likelihood (memory, not math)


class VAEMLP(nn.Module):
    family = "vae"
    Config = Config
    observation = "bernoulli"  # p(x|z) over binarised pixels; nll is in nats of binary images

    def __init__(self, config: Config, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config, self.image_shape = config, image_shape
        d = math.prod(image_shape)
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, config.hidden),
            nn.Tanh(),  # (B, 500)
            nn.Linear(config.hidden, 2 * config.latent_dim),  # (B, 2L): mu, logvar
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden),
            nn.Tanh(),  # (B, 500)
            nn.Linear(config.hidden, d),
            nn.Unflatten(-1, image_shape),  # (B, C, H, W) Bernoulli logits
        )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def observe(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] → the observations the likelihood is defined on (binary pixels)."""
        return binarize(x, generator)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, L) each
        return mu, logvar

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Single-sample ELBO per image (nats), with the analytic KL: E_q[log p(x|z)] − KL(q(z|x) || p(z))."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation, (B, L)
        return bernoulli_log_prob(self.decoder(z), x) - gaussian_kl(mu, logvar)  # (B,)

    def log_likelihood(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) with k samples from q(z|x) (Burda et al. 2016, eq. 8), per image."""
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        log_w = []
        for start in range(0, k, self.config.iwae_chunk):
            s = min(self.config.iwae_chunk, k - start)
            z = mu + torch.randn(s, *mu.shape, device=mu.device) * std  # (s, B, L)
            log_w.append(bernoulli_log_prob(self.decoder(z), x) + normal_log_prob(z) - normal_log_prob(z, mu, logvar))
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)  # (B,)

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        elbo = self.elbo(self.observe(x)).mean()
        optimizers["vae"].zero_grad(set_to_none=True)
        (-elbo).backward()
        optimizers["vae"].step()
        return {"loss": -elbo.item()}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return to_uint8(torch.sigmoid(self.decoder(mu)))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means (Bernoulli probabilities) of z ~ N(0, I), as uint8 images."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, device=device, generator=generator)
        return to_uint8(torch.sigmoid(self.decoder(z)))
