"""The model contract, parametrised over the registry, and each family's math against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

import baselines
from baselines.common import bernoulli_log_prob, gaussian_kl, normal_log_prob
from baselines.gan_mlp import generator_loss

SHAPES = [(1, 28, 28), (3, 32, 32)]
VAES = [name for name, cls in baselines.MODELS.items() if cls.family == "vae"]


def build(name: str, shape, seed: int = 0):
    torch.manual_seed(seed)
    cls = baselines.MODELS[name]
    return cls(cls.Config(), shape)


def batch(shape, n=8, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_registry_is_literal_and_complete():
    assert list(baselines.MODELS) == ["gan-mlp", "vae-mlp"]
    assert {cls.family for cls in baselines.MODELS.values()} == {"gan", "vae"}
    with pytest.raises(KeyError, match="unknown model 'nope'; known models: gan-mlp, vae-mlp"):
        baselines.build("nope", None, (1, 28, 28))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(baselines.MODELS))
def test_train_step_is_finite_and_changes_parameters(name, shape):
    model = build(name, shape)
    before = [p.detach().clone() for p in model.parameters()]
    logs = model.train_step(batch(shape), model.optimizers())
    assert logs and all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed), f"{sum(not c for c in changed)} parameter tensors did not change"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(baselines.MODELS))
def test_sample_returns_uint8_images_reproducibly(name, shape):
    model = build(name, shape).eval()
    a = model.sample(5, generator=torch.Generator().manual_seed(1))
    b = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (5, *shape)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(5, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", VAES)
def test_vae_likelihood_interface(name, shape):
    model = build(name, shape).eval()
    x = model.observe(batch(shape, 4))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert model.elbo(x).shape == (4,) and model.log_likelihood(x, 7).shape == (4,)
    recon = model.reconstruct(batch(shape, 4))
    assert recon.dtype == torch.uint8 and recon.shape == (4, *shape)


@pytest.mark.parametrize("name", VAES)
def test_iwae_bound_is_above_the_elbo_and_k1_matches_it_in_expectation(name):
    model = build(name, (1, 28, 28)).eval()
    x = model.observe(batch((1, 28, 28), 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x) for _ in range(200)]).mean(0)  # (16,)
        k1 = torch.stack([model.log_likelihood(x, 1) for _ in range(200)]).mean(0)
        k100 = model.log_likelihood(x, 100)
    # k = 1: a single importance weight, whose log has expectation = ELBO (MC KL vs analytic KL)
    assert torch.allclose(k1, elbo, rtol=0, atol=0.02 * elbo.abs().mean().item())
    assert (k100 >= elbo).all()


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-5)


def test_log_densities_match_torch_distributions():
    z, mu, logvar = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    expected = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(normal_log_prob(z, mu, logvar), expected, atol=1e-5)
    logits, x = torch.randn(2, 4, 1, 3, 3), torch.bernoulli(torch.full((4, 1, 3, 3), 0.5))
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(2).sum(-1)
    assert bernoulli_log_prob(logits, x).shape == (2, 4)
    assert torch.allclose(bernoulli_log_prob(logits, x), expected, atol=1e-5)


def test_generator_loss_is_non_saturating():
    logits = torch.tensor([-8.0, 0.0, 3.0])
    assert torch.allclose(generator_loss(logits), -torch.log(torch.sigmoid(logits)).mean())
    # where D confidently rejects samples (D(G(z)) ≈ 0) the gradient stays large, unlike log(1 − D(G(z)))
    logits = torch.tensor([-8.0], requires_grad=True)
    generator_loss(logits).backward()
    assert abs(logits.grad.item()) > 0.99
