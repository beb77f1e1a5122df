"""Likelihood metrics of VAEs on the test split: ELBO, rate and distortion, importance-weighted NLL (Burda et al.
2016), bits/dim.

Conventions (README, "Likelihood conventions"): values are nats per image, averaged over the test split (or its
first `likelihood_images` images). Each dataset fixes the observation model: for the MNIST family the test images
are binarised once, on the CPU, with the evaluation seed (`observe_test`; their digest is in the protocol) and the
decoder is Bernoulli, so `nll_iwae` is the test NLL of binarised images as in the literature; for CIFAR-10 the
decoder is a discretised logistic over the 8-bit values, so `bits_per_dim` = nll / (D · ln 2) is the discrete
quantity published for CIFAR-10. `rate` is the mean KL(q(z|x) || p(z)) and `distortion` the mean −log p(x|z) of one
posterior sample; elbo = −(rate + distortion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from baselines.common import observation_model
from baselines.contract import LikelihoodModel
from bench.schema import BITS_PER_DIM, DISTORTION, ELBO, NLL_IWAE, RATE, RECON_PSNR, RECON_SSIM
from bench.storage import bytes_digest


@dataclass(frozen=True)
class Observed:
    """The test images as the likelihood sees them: float (N, C, H, W) in [0, 1] on the CPU, and their digest."""

    images: torch.Tensor
    digest: str
    observation: str


def observe_test(images: torch.Tensor, observation: str, seed: int) -> Observed:
    """The test split under the dataset's observation model, made once: binarised on the CPU for the MNIST family,
    all images at once with a CPU generator seeded by the evaluation seed, so a GPU run and a CPU run, or two batch
    sizes, score the same binary images (their sha256 goes into the protocol); 8-bit data are pinned to the bin
    centres, deterministically."""
    x = observation_model(observation).observe(images.cpu().float() / 255.0, torch.Generator().manual_seed(seed))
    as_bytes = (x * 255).round().to(torch.uint8).contiguous().numpy().tobytes()
    return Observed(x, bytes_digest([as_bytes])[:16], observation)


@torch.no_grad()
def vae_likelihood(
    model: LikelihoodModel, observed: Observed, k: int, batch_size: int, seed: int
) -> tuple[dict[str, float], torch.Tensor]:
    """ELBO, rate, distortion, k-sample IWAE NLL and bits/dim of `model` on the observed test images; and each
    image's k-sample IWAE bound of log p(x), (N,) float64 on the CPU (what AIS under the VAE's own model is checked
    against, so that the bound is computed once)."""
    device = next(model.parameters()).device
    images = observed.images
    log_px_sum = kl_sum = 0.0
    bounds = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the posterior samples inside elbo_terms/log_likelihood
        for chunk in images.split(batch_size):
            x = chunk.to(device)
            log_px, kl = model.elbo_terms(x)
            log_px_sum += log_px.double().sum().item()
            kl_sum += kl.double().sum().item()
            bounds.append(model.log_likelihood(x, k).double().cpu())
    n, dims = len(images), math.prod(images.shape[1:])
    per_image = torch.cat(bounds)
    nll = -per_image.sum().item() / n
    metrics = {
        ELBO: (log_px_sum - kl_sum) / n,
        RATE: kl_sum / n,
        DISTORTION: -log_px_sum / n,
        NLL_IWAE: nll,
        BITS_PER_DIM: nll / (dims * math.log(2)),
    }
    return metrics, per_image


@torch.no_grad()
def reconstruction_quality(model, images: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM (Gaussian window 11, σ 1.5) of the VAE's reconstructions — the decoder mean
    at the posterior mean — against the original uint8 images (N, C, H, W), on a [0, 1] range (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    device = next(model.parameters()).device
    psnr, ssim = [], []
    for chunk in images.split(batch_size):
        x = chunk.to(device).float() / 255.0
        r = model.reconstruct(x).float() / 255.0
        psnr.append(peak_signal_noise_ratio(r, x, data_range=1.0, reduction="none", dim=(1, 2, 3)).double().cpu())
        ssim.append(structural_similarity_index_measure(r, x, data_range=1.0, reduction="none").double().cpu())
    return {RECON_PSNR: torch.cat(psnr).mean().item(), RECON_SSIM: torch.cat(ssim).mean().item()}
