from __future__ import annotations

import math

import pytest
import torch

import baselines
from bench.config import TrainConfig
from bench.data import load
from bench.eval.likelihood import observe_test, vae_likelihood
from bench.run.train import train


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
    images = observe_test(digits.test_images[:100], "bernoulli", seed=0)
    a, per_image = vae_likelihood(model, images, k=64, batch_size=50, seed=0)
    again, again_per_image = vae_likelihood(model, images, k=64, batch_size=50, seed=0)
    assert a == again and torch.equal(per_image, again_per_image)
    assert per_image.shape == (len(images.images),) and a["nll_iwae"] == pytest.approx(-per_image.mean().item())
    assert -a["elbo"] >= a["nll_iwae"] > 0  # the IWAE bound is tighter than the ELBO
    more, _ = vae_likelihood(model, images, k=256, batch_size=50, seed=0)
    assert more["nll_iwae"] <= a["nll_iwae"] + 0.5  # more importance samples: a tighter bound (up to MC noise)


def test_rate_and_distortion_add_up_to_the_elbo_and_cifar_bits_per_dim_are_discrete():
    digits = load("digits")
    torch.manual_seed(0)
    model = baselines.build("conv-vae", None, (1, 28, 28), digits.observation)
    out, _ = vae_likelihood(model, observe_test(digits.test_images[:40], "bernoulli", 0), k=8, batch_size=20, seed=0)
    assert out["elbo"] == pytest.approx(-(out["rate"] + out["distortion"]), rel=1e-9)
    assert out["rate"] >= 0 and out["distortion"] > 0

    # 8-bit colour images under the discretised logistic: a probability, so 0 < bits/dim, and an untrained model
    # is no better than ~uniform over 256 values (8 bits/dim) by much
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = baselines.build("iwae", None, (3, 32, 32), "discretized-logistic")
    out, _ = vae_likelihood(model, observe_test(images, "discretized-logistic", 0), k=8, batch_size=3, seed=0)
    assert 0 < out["bits_per_dim"] and out["bits_per_dim"] > 6.0
    assert out["nll_iwae"] <= -out["elbo"] + 1.0


def test_reconstruction_quality_against_closed_forms():
    from bench.eval.likelihood import reconstruction_quality

    class Shifted(torch.nn.Module):
        """reconstruct(x) = x + shift (clamped): per-image MSE is known, so PSNR = −10·log10(MSE)."""

        def __init__(self, shift):
            super().__init__()
            self.w, self.shift = torch.nn.Parameter(torch.zeros(1)), shift

        def reconstruct(self, x):
            return ((x + self.shift).clamp(0, 1) * 255).round().to(torch.uint8)

    images = torch.randint(0, 200, (10, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = reconstruction_quality(Shifted(0.05), images, batch_size=4)
    x = images.double() / 255
    r = ((x + 0.05).clamp(0, 1) * 255).round() / 255  # k + 12.75: no rounding ties
    expected = (-10 * torch.log10(((r - x) ** 2).flatten(1).mean(1))).mean().item()
    assert out["recon_psnr"] == pytest.approx(expected, rel=1e-4)
    assert 0 < out["recon_ssim"] < 1
    assert reconstruction_quality(Shifted(0.0), images, batch_size=4)["recon_ssim"] == pytest.approx(1.0)


def test_bits_per_dim_of_a_coin_flip_model_is_one_bit_per_binary_pixel():
    """A closed form, not the implementation's formula: a VAE whose encoder returns q(z|x) = p(z) and whose decoder
    returns logits 0 gives every binary image p(x) = 2^-784 exactly (the importance weights are all 1), so NLL =
    784 ln 2 nats, 1 bit per binary pixel, rate 0."""
    model = baselines.build("vae-mlp", None, (1, 28, 28), "bernoulli")
    with torch.no_grad():
        for layer in (model.encoder[-1], model.decoder[-2]):
            layer.weight.zero_()
            layer.bias.zero_()
    images = observe_test(load("digits").test_images[:20], "bernoulli", seed=3)
    out, _ = vae_likelihood(model, images, k=16, batch_size=7, seed=0)
    assert out["bits_per_dim"] == pytest.approx(1.0, abs=1e-6)
    assert out["nll_iwae"] == pytest.approx(784 * math.log(2), rel=1e-6)
    assert out["rate"] == pytest.approx(0.0, abs=1e-6) and out["elbo"] == pytest.approx(-out["nll_iwae"], rel=1e-6)


def test_the_test_split_is_binarised_once_on_the_cpu_whatever_the_batching():
    """Issue 16 item 5: the binary test images depend only on the evaluation seed, not on device or batch size, and
    their digest (in the protocol) says which images were scored."""
    test = load("digits").test_images[:50]
    a, b = observe_test(test, "bernoulli", seed=0), observe_test(test, "bernoulli", seed=0)
    assert a.digest == b.digest and torch.equal(a.images, b.images)
    assert set(a.images.unique().tolist()) == {0.0, 1.0} and a.images.device.type == "cpu"
    assert observe_test(test, "bernoulli", seed=1).digest != a.digest
    # the 8-bit convention is deterministic and keeps the values
    colour = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(observe_test(colour, "discretized-logistic", 5).images * 255, colour.float())
