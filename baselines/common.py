"""Math shared by every baseline of a family: image conversion and the log-densities of the VAE objectives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → uint8 in [0, 255] (the contract of every `sample` and `reconstruct`)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) for binary x, summed over all but the leading batch dimensions."""
    lp = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    return lp.flatten(start_dim=lp.dim() - x.dim() + 1).sum(-1)


def normal_log_prob(
    z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))).sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form (Kingma & Welling 2014, appendix B), per row."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarisation: each pixel ~ Bernoulli(intensity) (Salakhutdinov & Murray 2008; Burda et al. 2016)."""
    return torch.bernoulli(x, generator=generator)
