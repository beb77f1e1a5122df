"""AIS log-likelihood of a GAN generator or a VAE decoder (Wu et al. 2017): the observation model's σ chosen on
validation images, the scored test images, and BDMC's bounds on data simulated from the model, with what each cost;
and, for a VAE, AIS under its own observation model checked against its IWAE bound (`own_model_check`).
The sampler itself (schedules, HMC, AIS, the pilot, BDMC) is bench.eval.ais."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from baselines.contract import GenerativeModel
from bench.devices import strict_fp32
from bench.eval.ais import (
    BDMC,
    LogLik,
    ais,
    bits_per_dim,
    discretize,
    discretized_gaussian_log_lik,
    gradient_evals,
    pilot_then_score,
    schedule,
)
from bench.schema import (
    AIS_ACCEPT,
    AIS_BDMC_GAP,
    AIS_BDMC_LOWER,
    AIS_BDMC_S,
    AIS_BDMC_UPPER,
    AIS_GRADIENT_EVALS,
    AIS_NLL_STDERR,
    AIS_OWN_GAP,
    AIS_OWN_GAP_STDERR,
    AIS_OWN_IWAE_NLL,
    AIS_OWN_NLL,
    AIS_OWN_S,
    AIS_S,
    AIS_SELECT_S,
    AIS_SIGMA,
    AIS_VALIDATION_NLL,
    BITS_PER_DIM_AIS,
    NLL_AIS,
)


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
    model,
    images: torch.Tensor,
    sigma: float | torch.Tensor,
    cfg,
    steps: int,
    seed: int,
    batch: int | None = None,
    log_lik: Callable[[torch.Tensor], LogLik] | None = None,
    pilot_only: bool = False,
) -> Estimate:
    """log p(x) of images (N, C, H, W; uint8, or floats in [0, 1]) under the model's decoder with the discretised
    Gaussian noise σ (one σ, or one per image (N,)), per image, in batches of `batch` images (cfg.batch_images): a
    pilot fixes each image's step sizes, fresh chains replay them (`pilot_then_score`). `log_lik`, given a batch's
    σ, replaces the observation model (a VAE's own, where σ goes unused). `pilot_only`: the pilot's own estimates
    (cfg.pilot_chains adaptive chains; the pilot of the full estimate, with the same random numbers), a third of the
    cost and without the guarantee: for comparing candidates, never for a reported number."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    betas = schedule(steps, cfg.schedule)
    batch = batch or cfg.batch_images
    per_image = torch.is_tensor(sigma)
    make = log_lik or (lambda s: discretized_gaussian_log_lik(model.decoder_mean, s))
    settings = _hmc_settings(cfg)
    if pilot_only:
        settings["chains"] = settings.pop("pilot_chains")
    parts = []
    for i in range(0, len(images), batch):
        s = sigma[i : i + batch] if per_image else sigma
        x = _images(images[i : i + batch], device)
        if pilot_only:
            chains = ais(make(s), x, model.config.latent_dim, betas, generator=gen, **settings)
        else:
            chains = pilot_then_score(make(s), x, model.config.latent_dim, betas, generator=gen, **settings)
        parts.append((chains.log_mean_w.cpu(), chains.accept_per_image.cpu(), chains.step_sizes))
    log_px, accept, step_sizes = zip(*parts, strict=True)
    return Estimate(torch.cat(log_px), torch.cat(accept), torch.cat(step_sizes, dim=1))


def choose_sigma(model, validation: torch.Tensor, cfg, seed: int) -> tuple[float, dict[float, float]]:
    """The observation σ of the grid cfg.sigmas with the highest mean AIS log-likelihood of the validation images
    (cfg.validation_steps intermediate distributions): Wu et al.'s choice of the variance on a validation set. Every
    candidate σ runs in the same pass (each validation image once per σ, its own chains): one sequence of HMC
    transitions for the whole grid instead of one per σ. The candidates are compared on the adaptive pilot's
    estimates (cfg.pilot_chains chains, `estimate(pilot_only=True)`): a choice needs a ranking, not an unbiased
    number, and the pilot costs a third of pilot-then-score; the chosen σ's reported numbers come from the
    guaranteed estimator on the scored images."""
    sigmas = torch.tensor(cfg.sigmas, dtype=torch.float32)
    copies = validation.repeat_interleave(len(sigmas), dim=0)  # image-major: every batch holds every σ
    per_copy = sigmas.repeat(len(validation))
    est = estimate(model, copies, per_copy, cfg, cfg.validation_steps, seed, batch=cfg.batch_images * len(sigmas),
                   pilot_only=True)  # fmt: skip
    means = est.log_px.view(len(validation), len(sigmas)).mean(0)
    scores = {s: means[j].item() for j, s in enumerate(cfg.sigmas)}
    return max(scores, key=lambda s: scores[s]), scores


def simulate(model, n: int, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 8-bit images from the model's discretised Gaussian observation model and their latents: x = the bin of
    f(z*) + σ ε, z* ~ N(0, I)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, model.config.latent_dim, generator=gen, device=device)
    mean = model.decoder_mean(z)
    return discretize(mean + sigma * torch.randn(mean.shape, generator=gen, device=device)), z


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
            BITS_PER_DIM_AIS: bits_per_dim(nll, dims),
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
            log_lik = discretized_gaussian_log_lik(model.decoder_mean, sigma)
            betas = schedule(cfg.steps, cfg.schedule)
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


OWN_MODEL_TOLERANCE = 3.0  # standard errors by which AIS may fall short of the IWAE bound before it is flagged


def own_model_check(model, observed: torch.Tensor, iwae: torch.Tensor, cfg, seed: int, echo=print) -> dict:
    """AIS of a VAE under its own observation model (Bernoulli on the binarised test images, or its discretised
    logistic) with cfg.own_steps distributions, on the first cfg.images of the observed test images, beside its
    IWAE bound on the same images: `iwae`, each observed image's bound of log p(x) as the likelihood evaluation
    computed it (`likelihood.vae_likelihood`; not computed again). AIS's estimate is (stochastically) at least the
    IWAE bound when both are right (Wu et al. 2017, Table 2: AIS tighter than IWAE): the mean of AIS − IWAE over
    images below −OWN_MODEL_TOLERANCE standard errors means one of the two estimators is broken, and returns a
    warning. Returns {"metrics": …, "warning": str}."""
    images = observed[: cfg.images]
    if len(iwae) < len(images):
        raise ValueError(f"the IWAE bounds cover {len(iwae)} images, the check scores {len(images)}")
    iwae = iwae[: len(images)].double().cpu()
    with frozen(model):
        start = time.perf_counter()
        own = estimate(model, images, 1.0, cfg, cfg.own_steps, seed + 3, log_lik=lambda _: _observation_log_lik(model))
        elapsed = time.perf_counter() - start
    difference = own.log_px.double() - iwae  # per image: AIS log p̂ − IWAE bound, ≥ 0 in expectation
    gap = difference.mean().item()
    stderr = difference.std().item() / math.sqrt(len(difference)) if len(difference) > 1 else math.nan
    metrics = {
        AIS_OWN_NLL: -own.log_px.double().mean().item(),
        AIS_OWN_IWAE_NLL: -iwae.mean().item(),
        AIS_OWN_GAP: gap,
        AIS_OWN_GAP_STDERR: stderr,
        AIS_OWN_S: elapsed,
    }
    warning = ""
    if gap < -OWN_MODEL_TOLERANCE * (stderr if stderr == stderr else 0.0):
        warning = (
            f"AIS under the VAE's own observation model ({-metrics[AIS_OWN_NLL]:.2f} nats) falls below its IWAE bound "
            f"({-metrics[AIS_OWN_IWAE_NLL]:.2f}) by {-gap:.2f} ± {stderr:.2f} nats on the same {len(images)} images: "
            "one of the two estimators is wrong (too few AIS steps or chains, or a broken likelihood)"
        )
        echo(f"      warning: {warning}")
    else:
        echo(f"      AIS (own observation model) − IWAE: {gap:+.2f} ± {stderr:.2f} nats per image (≥ 0 expected)")
    return {"metrics": metrics, "warning": warning}


def _observation_log_lik(model) -> LogLik:
    """log p(x|z) under a VAE's own observation model, (N,): its decoder's params scored by its `observation`."""

    def log_lik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return model.observation.log_prob(model.decode(z), x)

    return log_lik


def has_own_model(model) -> bool:
    """Whether a VAE exposes its observation model (`decode` and `observation`, as baselines.common's VAEs do)."""
    return getattr(model, "family", "") == "vae" and hasattr(model, "decode") and hasattr(model, "observation")
