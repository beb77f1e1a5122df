"""Log-likelihood of decoder-based models by annealed importance sampling (AIS; Neal 2001), as Wu et al. 2017 ("On
the Quantitative Analysis of Decoder-Based Generative Models") apply it to GANs and VAEs, with bidirectional Monte
Carlo (BDMC; Grosse et al. 2015) to say how tight the estimate is.

The model: p(x) = ∫ p(z) p(x|z) dz with p(z) = N(0, I). AIS moves K chains per image from the prior to the posterior
through π_t(z) ∝ p(z) p(x|z)^β_t, 0 = β_0 < β_1 < … < β_T = 1, one Hamiltonian Monte Carlo transition per
intermediate distribution, and accumulates the log-weight Σ_t (β_t − β_{t−1}) log p(x|z_{t−1}). The weight is an
unbiased estimate of p(x), so the log of its mean over the chains is a stochastic lower bound of log p(x).

BDMC: for data simulated from the model, (z*, x) ~ p(z) p(x|z), z* is an exact posterior sample; AIS run backwards
from it (β from 1 to 0) estimates 1/p(x) without bias, which bounds log p(x) from above. The gap between the two
bounds on simulated data bounds the forward estimate's error there (Grosse et al. 2015; Wu et al. sec. 4).

Observation model for both families (Wu et al. sec. 3): p(x|z) = N(x; f(z), σ² I), f(z) the decoder's mean image
with pixels in [0, 1], σ chosen from a grid on validation images. Values are nats of a density over [0, 1]^D; bits/dim
puts the same density on the 0–255 pixel scale (x = k/255 carried to k): −log₂ p(x)/D + log₂ 255.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from baselines.contract import GenerativeModel
from bench.devices import strict_fp32
from bench.schema import (
    AIS_ACCEPT,
    AIS_BDMC_GAP,
    AIS_BDMC_LOWER,
    AIS_BDMC_S,
    AIS_BDMC_UPPER,
    AIS_GRADIENT_EVALS,
    AIS_NLL_STDERR,
    AIS_S,
    AIS_SELECT_S,
    AIS_SIGMA,
    AIS_VALIDATION_NLL,
    BITS_PER_DIM_AIS,
    NLL_AIS,
)

LogLik = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z (N, L), x (N, ...)) → log p(x|z), (N,)

STEP_SIZE_RANGE = (1e-4, 0.5)  # the clamp of the adapted HMC step size (Wu et al.'s code uses the same bounds)


def bits_per_dim_255(nll: float, dims: int) -> float:
    """Bits per dimension of a density on pixels x = k/255 in [0, 1], carried to the 0–255 scale y = 255·x: the
    change of variables adds D·log 255 nats, so log2(255) bits per dimension (not 8 = log2 256, which would be
    right for x = k/256)."""
    return nll / (dims * math.log(2)) + math.log2(255)


def schedule(steps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    """β_0 = 0 < … < β_T = 1, float64 (T + 1,). "sigmoid": σ(δ(2t/T − 1)) rescaled to [0, 1] (Grosse et al. 2015),
    denser at both ends where the weights change fastest; "linear": evenly spaced."""
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = torch.sigmoid(delta * (2 * t - 1))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"unknown AIS schedule {kind!r}; known: sigmoid, linear")


def gaussian_log_lik(mean: Callable[[torch.Tensor], torch.Tensor], sigma: float | torch.Tensor) -> LogLik:
    """log N(x; mean(z), σ² I) summed over pixels: the observation model of Wu et al. for x in [0, 1]. `sigma`: one
    σ, or one per image (B,) of the batch AIS runs, whose rows are chain k of image i at k·B + i (every candidate σ
    of the σ search in one pass)."""
    if not torch.is_tensor(sigma):
        log_norm = math.log(sigma) + 0.5 * math.log(2 * math.pi)

        def log_lik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            d = x.flatten(1) - mean(z).flatten(1)
            return -0.5 * (d * d).sum(1) / sigma**2 - d.shape[1] * log_norm

        return log_lik

    def log_lik_per_image(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = x.flatten(1) - mean(z).flatten(1)
        s = sigma.to(d.device, d.dtype).repeat(len(d) // len(sigma))  # (K·B,): image i's σ on each of its chains
        return -0.5 * (d * d).sum(1) / s**2 - d.shape[1] * (s.log() + 0.5 * math.log(2 * math.pi))

    return log_lik_per_image


@dataclass
class Chains:
    """The outcome of one AIS run over B images with K chains each."""

    log_w: torch.Tensor  # (K, B) float64: each chain's log-weight
    accept_per_image: torch.Tensor  # (B,) mean HMC acceptance probability over transitions and chains
    step_sizes: torch.Tensor  # (T − 1, B): the step size of each transition (replayed by the reverse chain)

    @property
    def accept(self) -> float:
        """The mean HMC acceptance probability over transitions, chains and images."""
        return self.accept_per_image.mean().item()

    @property
    def log_mean_w(self) -> torch.Tensor:
        """log of the mean weight over the chains, per image (B,). Forward: the estimate of log p(x). Reverse: the log
        of an unbiased estimate of 1/p(x), whose negation bounds log p(x) from above."""
        return torch.logsumexp(self.log_w, dim=0) - math.log(self.log_w.shape[0])


def gradient_evals(steps: int, leapfrog: int) -> int:
    """Decoder forward + backward passes of one chain over `steps` distributions: the start, then `leapfrog` per
    transition (T − 1 transitions). The cost of AIS is this × chains × images."""
    return 1 + (steps - 1) * leapfrog


def _value_and_grad(log_lik: LogLik, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        ll = log_lik(z, x)
        (grad,) = torch.autograd.grad(ll.sum(), z)  # chains are independent rows: the sum's gradient is per row
    return ll.detach(), grad


def _hmc(log_lik: LogLik, x, z, ll, grad, beta: float, eps: torch.Tensor, leapfrog: int, gen: torch.Generator):
    """One HMC transition leaving π_β(z) ∝ N(z; 0, I) p(x|z)^β invariant: `leapfrog` leapfrog steps of size eps
    (N, 1), then a Metropolis–Hastings correction. Potential U(z) = ½|z|² − β log p(x|z)."""
    p0 = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
    p = p0 - 0.5 * eps * (z - beta * grad)
    z_new, ll_new, grad_new = z, ll, grad
    for i in range(leapfrog):
        z_new = z_new + eps * p
        ll_new, grad_new = _value_and_grad(log_lik, z_new, x)
        p = p - (eps if i < leapfrog - 1 else 0.5 * eps) * (z_new - beta * grad_new)
    energy_old = 0.5 * (z * z).sum(1) - beta * ll + 0.5 * (p0 * p0).sum(1)
    energy_new = 0.5 * (z_new * z_new).sum(1) - beta * ll_new + 0.5 * (p * p).sum(1)
    log_accept = (energy_old - energy_new).clamp(max=0.0).nan_to_num(nan=-math.inf)  # a NaN proposal is rejected
    u = torch.rand(log_accept.shape, generator=gen, device=z.device, dtype=z.dtype)
    take = torch.log(u) < log_accept
    z = torch.where(take[:, None], z_new, z)
    ll = torch.where(take, ll_new, ll)
    grad = torch.where(take[:, None], grad_new, grad)
    return z, ll, grad, log_accept.exp()


def ais(
    log_lik: LogLik,
    x: torch.Tensor,
    latent_dim: int,
    betas: torch.Tensor,
    *,
    chains: int,
    leapfrog: int,
    step_size: float,
    target_accept: float = 0.65,
    adapt: float = 0.05,
    generator: torch.Generator,
    start: torch.Tensor | None = None,
    step_sizes: torch.Tensor | None = None,
) -> Chains:
    """AIS for the images x (B, ...) with `chains` chains each, through the distributions of `betas`.

    Forward, adaptive (start None, step_sizes None): chains start from the prior; the step size is adapted per image
    after every transition, ×(1 + adapt) when its chains' mean acceptance probability exceeds target_accept and
    ×(1 − adapt) otherwise (Wu et al. 2017), within STEP_SIZE_RANGE. The kernels then depend on the chains' own
    history, so these weights are not an unbiased estimate of p(x): use it as a pilot (`pilot_then_score`).

    Forward, replayed (start None, step_sizes (T − 1, B) from a pilot): fixed kernels, no adaptation; every weight is
    an unbiased estimate of p(x), so log of their mean is a stochastic lower bound of log p(x).

    Reverse (start = exact posterior samples (B, L), step_sizes (T − 1, B)): chains start at β = 1 and anneal to the
    prior with the given step sizes, fixed.
    """
    b, steps = x.shape[0], len(betas) - 1
    reverse = start is not None
    if step_sizes is not None and step_sizes.shape != (steps - 1, b):
        raise ValueError(f"step_sizes must have shape (T - 1, B) = ({steps - 1}, {b}), got {tuple(step_sizes.shape)}")
    if reverse and step_sizes is None:
        raise ValueError("a reverse AIS run needs fixed step sizes (a pilot's), shape (T - 1, B)")
    replay = step_sizes is not None
    device = x.device
    xs = x.repeat(chains, *[1] * (x.dim() - 1))  # (K·B, ...): row k·B + i is chain k of image i
    if reverse:
        z = start.to(device, torch.float32).repeat(chains, 1)
    else:
        z = torch.randn(chains * b, latent_dim, generator=generator, device=device)
    ll, grad = _value_and_grad(log_lik, z, xs)
    log_w = torch.zeros(chains * b, dtype=torch.float64, device=device)
    eps = torch.full((b,), step_size, device=device)
    used = torch.empty(max(steps - 1, 0), b, device=device)
    accept_sum = torch.zeros(b, device=device)  # per image, summed on the device: no host sync per transition
    betas = betas.tolist()
    for i in range(1, steps + 1):
        if reverse:  # t = T, …, 1: weight at z_t, then the transition of π_{t−1} (none after the prior's)
            t = steps - i + 1
            log_w += (betas[t - 1] - betas[t]) * ll.double()
            if t == 1:
                break
            beta, eps = betas[t - 1], step_sizes[t - 2].to(device)
        else:  # t = 1, …, T: weight at z_{t−1}, then the transition of π_t (none at β_T = 1: it would be unused)
            t = i
            log_w += (betas[t] - betas[t - 1]) * ll.double()
            if t == steps:
                break
            beta = betas[t]
            if replay:
                eps = step_sizes[t - 1].to(device)
        used[t - 1 if not reverse else t - 2] = eps
        z, ll, grad, acc = _hmc(log_lik, xs, z, ll, grad, beta, eps.repeat(chains)[:, None], leapfrog, generator)
        acc = acc.view(chains, b).mean(0)  # per image
        accept_sum += acc
        if not replay:
            eps = (eps * torch.where(acc > target_accept, 1 + adapt, 1 - adapt)).clamp(*STEP_SIZE_RANGE)
    transitions = max(steps - 1, 1)
    return Chains(log_w.view(chains, b), accept_sum / transitions, used.cpu())


def pilot_then_score(
    log_lik: LogLik, x: torch.Tensor, latent_dim: int, betas: torch.Tensor, *, pilot_chains: int, **kwargs
) -> Chains:
    """AIS with the guarantee: a short pilot (`pilot_chains` chains per image, adaptive) fixes each image's step-size
    schedule; fresh chains (`chains`, the same generator further on, so independent of the pilot's) replay it with
    fixed kernels. The scored weights are then unbiased estimates of p(x) given the schedule, and their log-mean a
    stochastic lower bound of log p(x); adapting on the scored chains themselves would forfeit that."""
    chains = kwargs.pop("chains")
    pilot = ais(log_lik, x, latent_dim, betas, chains=pilot_chains, **kwargs)
    return ais(log_lik, x, latent_dim, betas, chains=chains, step_sizes=pilot.step_sizes, **kwargs)


@dataclass
class BDMC:
    lower: torch.Tensor  # (B,) forward AIS estimates of log p(x), stochastic lower bounds
    upper: torch.Tensor  # (B,) reverse AIS estimates, stochastic upper bounds

    @property
    def gap(self) -> float:
        """Mean upper − lower bound, nats: how far the forward estimate can be from log p(x) on these data."""
        return (self.upper - self.lower).mean().item()


def bdmc(
    log_lik: LogLik,
    x: torch.Tensor,
    z_star: torch.Tensor,
    betas: torch.Tensor,
    *,
    generator,
    pilot_chains: int = 0,
    **kwargs,
) -> BDMC:
    """Both bounds of log p(x) for x simulated from the model with latents z_star: forward AIS from the prior, then
    reverse AIS from z_star with the same step sizes. With pilot_chains, a pilot fixes the step sizes and both runs
    replay them (the forward bound is then a bound in expectation); without, the forward run adapts on its own
    chains and the reverse run replays what it used."""
    latent = z_star.shape[1]
    if pilot_chains:
        fwd = pilot_then_score(log_lik, x, latent, betas, generator=generator, pilot_chains=pilot_chains, **kwargs)
    else:
        fwd = ais(log_lik, x, latent, betas, generator=generator, **kwargs)
    rev = ais(  # the reverse run does not adapt: target_accept and adapt go unused there
        log_lik, x, latent, betas, generator=generator, start=z_star, step_sizes=fwd.step_sizes, **kwargs
    )
    return BDMC(fwd.log_mean_w.cpu(), -rev.log_mean_w.cpu())


# ------------------------------------------------------------------------------------ GANs and VAEs under AIS


@contextmanager
def frozen(model):
    """Eval mode (BatchNorm's running statistics), no parameter gradients, strict fp32; restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with strict_fp32():
            yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _hmc_settings(cfg) -> dict:
    """The keyword arguments of `ais` (and `bdmc`) that AISConfig sets."""
    return {
        "chains": cfg.chains,
        "leapfrog": cfg.leapfrog,
        "step_size": cfg.step_size,
        "target_accept": cfg.target_accept,
        "pilot_chains": cfg.pilot_chains,
    }


def check_test_split(cfg, test_images: int, dataset: str = "") -> None:
    """The scored images (the first cfg.images) and the σ-choosing ones (the last validation_images) must be
    disjoint parts of the test split; ValueError otherwise."""
    if cfg.images and cfg.images + cfg.validation_images > test_images:
        raise ValueError(
            f"eval.ais.images ({cfg.images}) + eval.ais.validation_images ({cfg.validation_images}) exceed the "
            f"{test_images} test images{f' of {dataset}' if dataset else ''} (σ is chosen on test images disjoint "
            "from the scored ones); lower them"
        )


def _images(x: torch.Tensor, device) -> torch.Tensor:
    """uint8 → [0, 1], the decoders' mean scale; images already in [0, 1] (simulated ones) as they are."""
    return x.to(device).float() / 255.0 if x.dtype == torch.uint8 else x.to(device).float()


@dataclass
class Estimate:
    log_px: torch.Tensor  # (N,) AIS estimates of log p(x), on the CPU
    accept: torch.Tensor  # (N,) mean HMC acceptance probability of each image's chains
    step_sizes: torch.Tensor  # (T − 1, N) the pilot's step sizes (what a reverse BDMC run replays)


def estimate(
    model, images: torch.Tensor, sigma: float | torch.Tensor, cfg, steps: int, seed: int, batch: int | None = None
) -> Estimate:
    """log p(x) of images (N, C, H, W; uint8, or floats in [0, 1]) under the model's decoder with Gaussian noise σ
    (one σ, or one per image (N,)), per image, in batches of `batch` images (cfg.batch_images): a pilot fixes each
    image's step sizes, fresh chains replay them (`pilot_then_score`)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    betas = schedule(steps, cfg.schedule)
    batch = batch or cfg.batch_images
    per_image = torch.is_tensor(sigma)
    parts = []
    for i in range(0, len(images), batch):
        s = sigma[i : i + batch] if per_image else sigma
        chains = pilot_then_score(
            gaussian_log_lik(model.decoder_mean, s),
            _images(images[i : i + batch], device),
            model.config.latent_dim,
            betas,
            generator=gen,
            **_hmc_settings(cfg),
        )
        parts.append((chains.log_mean_w.cpu(), chains.accept_per_image.cpu(), chains.step_sizes))
    log_px, accept, step_sizes = zip(*parts, strict=True)
    return Estimate(torch.cat(log_px), torch.cat(accept), torch.cat(step_sizes, dim=1))


def choose_sigma(model, validation: torch.Tensor, cfg, seed: int) -> tuple[float, dict[float, float]]:
    """The observation σ of the grid cfg.sigmas with the highest mean AIS log-likelihood of the validation images
    (cfg.validation_steps intermediate distributions): Wu et al.'s choice of the variance on a validation set. Every
    candidate σ runs in the same pass (each validation image once per σ, its own pilot and chains): one sequence of
    HMC transitions for the whole grid instead of one per σ."""
    sigmas = torch.tensor(cfg.sigmas, dtype=torch.float32)
    copies = validation.repeat_interleave(len(sigmas), dim=0)  # image-major: every batch holds every σ
    per_copy = sigmas.repeat(len(validation))
    est = estimate(model, copies, per_copy, cfg, cfg.validation_steps, seed, batch=cfg.batch_images * len(sigmas))
    means = est.log_px.view(len(validation), len(sigmas)).mean(0)
    scores = {s: means[j].item() for j, s in enumerate(cfg.sigmas)}
    return max(scores, key=lambda s: scores[s]), scores


def simulate(model, n: int, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images from the model's Gaussian observation model and their latents: x = f(z*) + σ ε, z* ~ N(0, I)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, model.config.latent_dim, generator=gen, device=device)
    mean = model.decoder_mean(z)
    return mean + sigma * torch.randn(mean.shape, generator=gen, device=device), z


def decoder_likelihood(
    model: GenerativeModel, test: torch.Tensor, cfg, seed: int, echo: Callable[[str], None] = print
) -> dict:
    """AIS metrics of a GAN generator or VAE decoder: σ chosen on the validation images (the last
    cfg.validation_images of the test split), nll_ais and bits_per_dim_ais on the first cfg.images, the BDMC gap on
    cfg.bdmc_images simulated images, and the cost. Returns {"metrics": …, "validation": {σ: mean log p}}."""
    check_test_split(cfg, len(test))
    scored, validation = test[: cfg.images], test[len(test) - cfg.validation_images :]
    dims = math.prod(test.shape[1:])
    with frozen(model):
        start = time.perf_counter()
        if len(cfg.sigmas) > 1:
            sigma, scores = choose_sigma(model, validation, cfg, seed)
        else:
            sigma, scores = cfg.sigmas[0], {}
        select_s = time.perf_counter() - start
        echo(f"      AIS: σ = {sigma:g} chosen on {len(validation)} validation images in {select_s:.0f}s")
        warning = ""
        if scores and sigma in (min(cfg.sigmas), max(cfg.sigmas)):
            warning = (
                f"the chosen σ = {sigma:g} is at the edge of eval.ais.sigmas {list(cfg.sigmas)}: the best σ may lie "
                "beyond it; widen the grid"
            )
            echo(f"      warning: {warning}")
        start = time.perf_counter()
        # BDMC's data, simulated from the model, run forward in the scored images' pass (one sequence of
        # transitions for both); their reverse run follows with the step sizes their pilot fixed
        device = next(model.parameters()).device
        x_sim, z_star = torch.empty(0, *scored.shape[1:], device=device), None
        if cfg.bdmc_images:
            x_sim, z_star = simulate(model, cfg.bdmc_images, sigma, seed + 1)
        est = estimate(model, torch.cat([_images(scored, device), x_sim]), sigma, cfg, cfg.steps, seed)
        log_px, n = est.log_px[: len(scored)], len(scored)
        test_s = time.perf_counter() - start
        nll = -log_px.mean().item()
        metrics = {
            NLL_AIS: nll,
            BITS_PER_DIM_AIS: bits_per_dim_255(nll, dims),
            AIS_NLL_STDERR: log_px.std().item() / math.sqrt(len(log_px)) if len(log_px) > 1 else math.nan,
            AIS_SIGMA: sigma,
            AIS_ACCEPT: est.accept[:n].mean().item(),
            AIS_GRADIENT_EVALS: float(gradient_evals(cfg.steps, cfg.leapfrog)),
            AIS_SELECT_S: select_s,
            AIS_S: test_s,
        }
        if scores:
            metrics[AIS_VALIDATION_NLL] = -scores[sigma]
        if cfg.bdmc_images:
            start = time.perf_counter()
            gen = torch.Generator(device=x_sim.device).manual_seed(seed + 2)
            log_lik, betas = gaussian_log_lik(model.decoder_mean, sigma), schedule(cfg.steps, cfg.schedule)
            settings = {k: v for k, v in _hmc_settings(cfg).items() if k != "pilot_chains"}
            reverse = ais(log_lik, x_sim, z_star.shape[1], betas, generator=gen, start=z_star,
                          step_sizes=est.step_sizes[:, n:], **settings)  # fmt: skip
            b = BDMC(est.log_px[n:], -reverse.log_mean_w.cpu())
            metrics.update(
                {
                    AIS_BDMC_LOWER: b.lower.mean().item(),
                    AIS_BDMC_UPPER: b.upper.mean().item(),
                    AIS_BDMC_GAP: b.gap,
                    AIS_BDMC_S: time.perf_counter() - start,  # the reverse run; the forward one is in AIS_S
                }
            )
    return {"metrics": metrics, "validation": {str(s): v for s, v in scores.items()}, "warning": warning}
