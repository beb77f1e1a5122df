from __future__ import annotations

import math

import torch

import baselines
from bench.config import TrainConfig
from bench.data import load
from bench.likelihood import vae_likelihood
from bench.train import train


class Quiet:
    def log_metrics(self, *a, **k):
        pass

    def log_samples(self, *a, **k):
        pass


def test_vae_likelihood_bounds_units_and_reproducibility():
    digits = load("digits")
    torch.manual_seed(0)
    model = baselines.MODELS["vae-mlp"](baselines.MODELS["vae-mlp"].Config(), (1, 28, 28))
    train(model, digits.train_images, TrainConfig(steps=60, batch_size=64), seed=0, logger=Quiet(), progress=False)
    images = digits.test_images[:100]
    a = vae_likelihood(model, images, k=64, batch_size=50, seed=0)
    assert a == vae_likelihood(model, images, k=64, batch_size=50, seed=0)
    assert -a["elbo"] >= a["nll_iwae"] > 0  # the IWAE bound is tighter than the ELBO
    assert a["bits_per_dim"] == a["nll_iwae"] / (784 * math.log(2))
    more = vae_likelihood(model, images, k=256, batch_size=50, seed=0)
    assert more["nll_iwae"] <= a["nll_iwae"] + 0.5  # more importance samples: a tighter bound (up to MC noise)
