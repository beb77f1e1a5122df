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

Observation model for both families: p(x|z) of Wu et al. sec. 3, a Gaussian N(f(z), σ² I) around the decoder's
mean image f(z) with σ chosen from a grid on validation images, discretised onto the 256 values of 8-bit pixels
(`discretized_gaussian_log_lik`: each value k/255 gets the Gaussian mass of its bin of width 1/255, the two end
bins the tails). The likelihood is then a probability, never above 1: −log p(x) ≥ 0 is a code length in nats and
bits/dim = −log₂ p(x)/D is the bits per 8-bit pixel, comparable with the discrete likelihoods of the literature.
Wu et al.'s continuous density N(x; f(z), σ² I) on 8-bit data grows without bound as σ → 0 (Theis et al. 2016), so
a number from it depends on the σ grid; it is kept (`gaussian_log_lik`) for the sampler's closed-form tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LogLik = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z (N, L), x (N, ...)) → log p(x|z), (N,)

STEP_SIZE_RANGE = (1e-4, 0.5)  # the clamp of the adapted HMC step size (Wu et al.'s code uses the same bounds)


def bits_per_dim(nll: float, dims: int) -> float:
    """Bits per dimension of a probability over D discrete pixels: −log₂ p(x) / D."""
    return nll / (dims * math.log(2))


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


LEVELS = 256  # the values of an 8-bit pixel, k/255 for k = 0 … 255
_EDGE = 1e4  # a standardised bin edge standing for ±∞ (Φ(−10⁴) underflows to 0 in float64, its gradient to 0)


def _log1mexp(t: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(t)) for t < 0, accurate at both ends (Mächler 2012); each branch fed values it is stable on."""
    near = t.clamp(min=-math.log(2), max=-1e-300)
    far = t.clamp(max=-math.log(2))
    return torch.where(t > -math.log(2), torch.log(-torch.expm1(near)), torch.log1p(-torch.exp(far)))


def log_bin_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a < b (float64): in the left tail as log Φ(b) + log(1 − Φ(a)/Φ(b)); a bin right of the
    mean reflected to the left (Φ(b) − Φ(a) = Φ(−a) − Φ(−b)) so that neither tail cancels."""
    right = a > 0
    a, b = torch.where(right, -b, a), torch.where(right, -a, b)
    upper, lower = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return upper + _log1mexp(lower - upper)


_TAIL = -20.0  # a reflected bin's upper edge below this: its mass from log Φ (erfc's relative accuracy ends near −26)
_SQRT_HALF, _LOG_SQRT_2PI = math.sqrt(0.5), 0.5 * math.log(2 * math.pi)


def log_bin_mass_fast(a: torch.Tensor, b: torch.Tensor, sync_free: bool | None = None) -> torch.Tensor:
    """log_bin_mass(a, b) at a third of its cost, for the bins AIS scores millions of times: reflected as there, so
    that the bin lies at or left of the mean, its mass is ½(erfc(−b/√2) − erfc(−a/√2)), a difference of two numbers
    of the same sign without cancellation beyond the bin's width; bins whose reflected upper edge lies below _TAIL
    (where erfc nears its underflow) go through log_bin_mass's log Φ. Same value to ~1e-13 relative.

    On the CPU the log-Φ form runs only on the tail bins, when there are any. `sync_free` (default: on a GPU) runs it
    on every bin and keeps the tail ones instead: asking whether there are any, or picking them out, would make the
    host wait for the device at every HMC step."""
    sync_free = a.is_cuda if sync_free is None else sync_free
    right = a > 0
    a, b = torch.where(right, -b, a), torch.where(right, -a, b)
    tail = b < _TAIL
    far = True if sync_free else bool(tail.any())
    sa, sb = (torch.where(tail, -1.0, a), torch.where(tail, 1.0, b)) if far else (a, b)  # finite stand-ins there
    out = torch.log(torch.special.erfc(-_SQRT_HALF * sb).sub_(torch.special.erfc(-_SQRT_HALF * sa)).mul_(0.5))
    if far and sync_free:
        out = torch.where(tail, log_bin_mass(torch.where(tail, a, -2.0), torch.where(tail, b, -1.0)), out)
    elif far:
        out[tail] = log_bin_mass(a[tail], b[tail])
    return out


class _DiscretisedGaussianLogLik(torch.autograd.Function):
    """Σ over pixels of log P(x | N(m, σ²) discretised), per row, with its gradient in m written out rather than
    taped through a dozen float64 operations: ∂/∂m log(Φ(b) − Φ(a)) = (φ(a) − φ(b)) / (σ (Φ(b) − Φ(a))) for the
    standardised bin edges a = (x − h − m)/σ, b = (x + h − m)/σ, evaluated in log space (exp(log φ − log mass)), so
    it stays finite in the far tails; φ(±edge) = 0 at the end bins. AIS needs first derivatives only."""

    @staticmethod
    def forward(ctx, mean: torch.Tensor, centre: torch.Tensor, sigma) -> torch.Tensor:
        half = 0.5 / (LEVELS - 1)
        m = mean.double()
        low = ((centre - half) - m).div_(sigma).masked_fill_(centre < half, -_EDGE)
        high = ((centre + half) - m).div_(sigma).masked_fill_(centre > 1 - half, _EDGE)
        log_mass = log_bin_mass_fast(low, high)
        ctx.save_for_backward(
            low, high, log_mass, sigma if torch.is_tensor(sigma) else torch.tensor(sigma, dtype=torch.float64)
        )
        ctx.dtype = mean.dtype
        return log_mass.sum(1).to(mean.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        low, high, log_mass, sigma = ctx.saved_tensors
        at_low = torch.exp((low * low).mul_(-0.5).sub_(log_mass).sub_(_LOG_SQRT_2PI))  # φ(a) / mass
        at_high = torch.exp((high * high).mul_(-0.5).sub_(log_mass).sub_(_LOG_SQRT_2PI))  # φ(b) / mass
        d_mean = at_low.sub_(at_high).div_(sigma).mul_(grad.double()[:, None])
        return d_mean.to(ctx.dtype), None, None


def discretized_gaussian_log_lik(mean: Callable[[torch.Tensor], torch.Tensor], sigma: float | torch.Tensor) -> LogLik:
    """log P(x|z) summed over pixels, x = k/255 (8-bit images on [0, 1]): the mass of N(mean(z), σ²) on the bin
    [x − 1/510, x + 1/510], the end bins (k = 0, 255) extended to −∞ and +∞, so the 256 masses sum to 1. Computed in
    float64 (tail masses of a narrow Gaussian), its gradient in closed form (_DiscretisedGaussianLogLik). `sigma`:
    one σ, or one per image (B,), rows laid out as in `gaussian_log_lik`."""

    def log_lik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu = mean(z).flatten(1)
        centre = x.flatten(1).double()
        if torch.is_tensor(sigma):
            s = sigma.to(mu.device, torch.float64).repeat(len(mu) // len(sigma))[:, None]
        else:
            s = float(sigma)
        return _DiscretisedGaussianLogLik.apply(mu, centre, s)

    return log_lik


def discretize(x: torch.Tensor) -> torch.Tensor:
    """Continuous values → the 8-bit value whose bin holds them, as k/255 (what the discretised model generates)."""
    return (x * (LEVELS - 1)).round().clamp(0, LEVELS - 1) / (LEVELS - 1)


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
