"""Likelihood metrics of VAEs on the test split: ELBO, importance-weighted NLL (Burda et al. 2016), bits/dim.

Conventions: values are nats per image, averaged over the test split. For models with a Bernoulli decoder the
test images are binarised once with the evaluation seed (stochastic binarisation), so `nll_iwae` is the test NLL
of binarised images, comparable with the MNIST-family literature; bits/dim = nll / (D · ln 2).
"""

from __future__ import annotations

import math

import torch

ELBO, NLL_IWAE, BITS_PER_DIM = "elbo", "nll_iwae", "bits_per_dim"


@torch.no_grad()
def vae_likelihood(model, images: torch.Tensor, k: int, batch_size: int, seed: int) -> dict[str, float]:
    """ELBO, k-sample IWAE NLL and bits/dim of `model` on uint8 images (N, C, H, W)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    elbo_sum = ll_sum = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the posterior samples inside elbo/log_likelihood
        for chunk in images.split(batch_size):
            x = model.observe(chunk.to(device).float() / 255.0, generator=g)
            elbo_sum += model.elbo(x).double().sum().item()
            ll_sum += model.log_likelihood(x, k).double().sum().item()
    n, dims = len(images), math.prod(images.shape[1:])
    nll = -ll_sum / n
    return {ELBO: elbo_sum / n, NLL_IWAE: nll, BITS_PER_DIM: nll / (dims * math.log(2))}
