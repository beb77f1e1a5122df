"""The model contract, parametrised over the registry, and each family's math against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import baselines
from baselines.common import (
    DiscretizedLogistic,
    bernoulli_log_prob,
    discretized_logistic_log_prob,
    gaussian_kl,
    generator_loss,
    normal_log_prob,
    upsampling_plan,
)
from baselines.sngan import hinge_d_loss
from baselines.wgan_gp import gradient_penalty

# Each image shape with the observation model its datasets use (bench/data.py OBSERVATIONS).
SHAPES = [((1, 28, 28), "bernoulli"), ((3, 32, 32), "discretized-logistic")]
GANS = [name for name, cls in baselines.MODELS.items() if cls.family == "gan"]
VAES = [name for name, cls in baselines.MODELS.items() if cls.family == "vae"]


def build(name: str, shape, observation="bernoulli", seed: int = 0, **config):
    torch.manual_seed(seed)
    cls = baselines.MODELS[name]
    return baselines.build(name, cls.Config(**config), shape, observation)


def batch(shape, n=8, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_registry_is_literal_and_complete():
    assert list(baselines.MODELS) == [
        "gan-mlp",
        "dcgan",
        "wgan-gp",
        "sngan",
        "vae-mlp",
        "conv-vae",
        "beta-vae",
        "iwae",
    ]
    assert len(GANS) == 4 and len(VAES) == 4
    with pytest.raises(KeyError, match="unknown model 'nope'; known models: gan-mlp, dcgan, wgan-gp"):
        baselines.build("nope", None, (1, 28, 28))


@pytest.mark.parametrize("shape,observation", SHAPES)
@pytest.mark.parametrize("name", list(baselines.MODELS))
def test_train_step_is_finite_and_changes_every_parameter(name, shape, observation):
    model = build(name, shape, observation)
    before = [p.detach().clone() for p in model.parameters()]
    x = batch(shape, 8 * model.batches_per_step)  # wgan-gp/sngan: one real batch per D update
    logs = model.train_step(x, model.optimizers())
    # losses stay on the device as detached scalars: the loop reads them back once per log interval, never per step
    assert logs and all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in logs.values()), logs
    assert all(math.isfinite(float(v)) for v in logs.values())
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed), f"{sum(not c for c in changed)} parameter tensors did not change"


@pytest.mark.parametrize("shape,observation", SHAPES)
@pytest.mark.parametrize("name", list(baselines.MODELS))
def test_sample_returns_uint8_images_of_the_shape_reproducibly(name, shape, observation):
    model = build(name, shape, observation).eval()
    a = model.sample(5, generator=torch.Generator().manual_seed(1))
    b = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (5, *shape)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(5, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("shape,observation", SHAPES)
@pytest.mark.parametrize("name", GANS)
def test_discriminator_scores_one_logit_per_image(name, shape, observation):
    model = build(name, shape)
    assert model.discriminator(batch(shape, 3)).shape == (3,)


@pytest.mark.parametrize("shape,observation", SHAPES)
@pytest.mark.parametrize("name", VAES)
def test_vae_likelihood_interface(name, shape, observation):
    model = build(name, shape, observation).eval()
    assert model.observation.name == observation
    x = model.observe(batch(shape, 4))
    if observation == "bernoulli":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    else:
        assert torch.equal(x, (x * 255).round() / 255)
    log_px, kl = model.elbo_terms(x)
    assert log_px.shape == kl.shape == (4,) and (log_px <= 0).all() and (kl >= 0).all()
    assert model.elbo(x).shape == (4,) and model.log_likelihood(x, 7).shape == (4,)
    recon = model.reconstruct(batch(shape, 4))
    assert recon.dtype == torch.uint8 and recon.shape == (4, *shape)


@pytest.mark.parametrize("name", VAES)
def test_iwae_k1_equals_the_elbo_and_the_bound_grows_with_k(name):
    """Burda et al. 2016: L_1 = ELBO and E[L_k] is non-decreasing in k (theorem 1); fixed seed, Monte Carlo."""
    model = build(name, (1, 28, 28)).eval()
    x = model.observe(batch((1, 28, 28), 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    reps = 200
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x) for _ in range(reps)]).mean(0)  # (16,)
        bound = {k: torch.stack([model.log_likelihood(x, k) for _ in range(reps // k)]).mean() for k in (1, 5, 50)}
        k1 = torch.stack([model.log_likelihood(x, 1) for _ in range(reps)]).mean(0)
    # k = 1: one importance weight, whose log has expectation = ELBO (MC KL vs analytic KL)
    assert torch.allclose(k1, elbo, rtol=0, atol=0.02 * elbo.abs().mean().item())
    assert bound[1] <= bound[5] <= bound[50], bound


def test_iwae_trains_on_the_k_sample_bound():
    model = build("iwae", (1, 28, 28), k=1)
    x = (batch((1, 28, 28), 8) > 0.5).float()  # binary already: observe() keeps it
    torch.manual_seed(3)
    loss = model.train_step(x, {"vae": torch.optim.SGD(model.parameters(), lr=0.0)})["loss"]
    torch.manual_seed(3)
    with torch.no_grad():
        expected = -model.iwae_bound(model.observe(x), 1).mean().item()  # the same draws
    assert loss == pytest.approx(expected, rel=1e-5)


def test_beta_vae_weights_the_rate_by_beta():
    model = build("beta-vae", (1, 28, 28), beta=4.0)
    logs = {k: float(v) for k, v in model.train_step(batch((1, 28, 28), 8), model.optimizers()).items()}
    assert logs["loss"] == pytest.approx(logs["distortion"] + 4.0 * logs["rate"], rel=1e-5)
    assert logs["elbo"] == pytest.approx(-(logs["distortion"] + logs["rate"]), rel=1e-5)


def test_gradient_penalty_matches_hand_computed_values():
    # a linear critic D(x) = <w, x> has gradient w everywhere: penalty (‖w‖ − 1)²
    critic = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.copy_(torch.tensor([[3.0, 0.0, 4.0, 0.0]]))  # ‖w‖ = 5
    real, fake = torch.rand(2, 1, 2, 2), torch.rand(2, 1, 2, 2)
    eps = torch.tensor([0.3, 0.8]).view(2, 1, 1, 1)
    assert gradient_penalty(critic, real, fake, eps).item() == pytest.approx(16.0)

    # D(x) = ½‖x‖² has gradient x̂ = ε·x + (1 − ε)·x̃: penalty mean over samples of (‖x̂‖ − 1)²
    class Quadratic(nn.Module):
        def forward(self, x):
            return 0.5 * (x**2).flatten(1).sum(1)

    real = torch.tensor([[1.0, 2.0], [0.0, 0.5]]).view(2, 1, 1, 2)
    fake = torch.tensor([[0.0, 0.0], [1.0, 1.5]]).view(2, 1, 1, 2)
    # x̂_1 = 0.5·(1, 2) = (0.5, 1): ‖x̂‖ = √1.25; x̂_2 = 0.25·(0, 0.5) + 0.75·(1, 1.5) = (0.75, 1.25): ‖x̂‖ = √2.125
    expected = ((math.sqrt(1.25) - 1) ** 2 + (math.sqrt(2.125) - 1) ** 2) / 2
    penalty = gradient_penalty(Quadratic(), real, fake, torch.tensor([0.5, 0.25]).view(2, 1, 1, 1))
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    assert penalty.requires_grad  # differentiable: it is part of the critic's loss


@pytest.mark.parametrize("shape,observation", SHAPES)
def test_spectral_norm_keeps_the_top_singular_value_near_one(shape, observation):
    model = build("sngan", shape, d_channels=8, g_channels=8)
    x = batch(shape, 4 * model.batches_per_step)
    opt = model.optimizers()
    for _ in range(3):
        model.train_step(x, opt)  # weights move; the power iteration follows them
    with torch.no_grad():
        for _ in range(30):
            model.discriminator(x[:4])  # one power iteration per forward pass in training mode
    normalised = [m for m in model.discriminator.modules() if hasattr(m, "parametrizations")]
    assert len(normalised) == 8  # seven convolutions and the linear output
    for m in normalised:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.02)
        raw = torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2).item()
        assert raw != pytest.approx(1.0, abs=0.05)  # the raw weights are not normalised themselves


def test_hinge_loss_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)


def test_discretized_logistic_is_a_distribution_over_256_values():
    mean = torch.tensor([0.0, 0.3, 0.5, 1.0, 0.02]).view(5, 1, 1, 1)
    log_scale = torch.tensor([-7.0, -3.0, -1.0, 0.5, -6.0]).view(5, 1, 1, 1)
    values = torch.arange(256.0) / 255
    log_p = torch.stack([discretized_logistic_log_prob(mean, log_scale, v.expand(5, 1, 1, 1)) for v in values])
    assert torch.allclose(log_p.exp().sum(0), torch.ones(5), atol=1e-4)
    # and it is exactly the logistic CDF difference across a bin away from the edges
    x, m, s = torch.tensor(100 / 255), torch.tensor(0.4), torch.tensor(-2.5)
    cdf = torch.distributions.TransformedDistribution(
        torch.distributions.Uniform(0.0, 1.0),
        [torch.distributions.transforms.SigmoidTransform().inv, torch.distributions.AffineTransform(m, s.exp())],
    ).cdf
    expected = torch.log(cdf(x + 0.5 / 255) - cdf(x - 0.5 / 255))
    got = discretized_logistic_log_prob(m.view(1, 1, 1, 1), s.view(1, 1, 1, 1), x.view(1, 1, 1, 1))
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    # importance-sample shapes: params (k, B, 2C, H, W) against data (B, C, H, W)
    params = torch.randn(3, 2, 6, 4, 4)
    data = DiscretizedLogistic().observe(torch.rand(2, 3, 4, 4))
    assert DiscretizedLogistic().log_prob(params, data).shape == (3, 2)


def test_upsampling_plan():
    assert upsampling_plan(28) == (7, 2) and upsampling_plan(32) == (4, 3) and upsampling_plan(64) == (4, 4)


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


class _HostTraffic(TorchDispatchMode):
    """Records the ops that move data between host and device inside a CUDA graph capture's reach: a tensor made
    from Python data (`lift_fresh`, a host-to-device copy on a GPU) or a value read back (`_local_scalar_dense`,
    `.item()`). Either makes the step impossible to capture."""

    FORBIDDEN = ("aten.lift_fresh", "aten._local_scalar_dense")

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.FORBIDDEN):
            self.seen.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape,observation", SHAPES)
@pytest.mark.parametrize("name", list(baselines.MODELS))
def test_train_step_can_live_in_a_cuda_graph(name, shape, observation):
    """train.cuda_graph captures the whole step: no tensor from host data, no value read back (IWAE's prior made a
    tensor of 0.0 per step, which failed capture on the GPU). SGD stands in for Adam, whose CPU step count is
    read on the host unless capturable (which needs a GPU)."""
    model = build(name, shape, observation)
    optimizers = {k: torch.optim.SGD(o.param_groups[0]["params"], lr=1e-3) for k, o in model.optimizers().items()}
    x = batch(shape, 8 * model.batches_per_step)
    model.train_step(x, optimizers)
    with _HostTraffic() as traffic:
        model.train_step(x, optimizers)
    assert not traffic.seen, f"{name}: {sorted(traffic.seen)} in train_step"
