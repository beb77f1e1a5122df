"""The model contract: what the runner, the training loop and the evaluation rely on, and nothing more.

Every baseline satisfies it, and so must a plugin (a model outside this repository, README "Benchmark your own
model"). `bench check-model NAME` checks it in seconds on tiny data (bench/check_model.py). The model owns its math;
the runner owns the schedule: batches, steps, checkpoints, evaluation.

Construction: `cls(config, image_shape)` for GANs, `cls(config, image_shape, observation)` for VAEs, where `config`
is an instance of `cls.Config` (a dataclass whose fields all have defaults: the hyperparameters, overridable from
bench.toml and `--set models.NAME.FIELD=...`), `image_shape` is (C, H, W) and `observation` the dataset's likelihood
convention ("bernoulli" for binarised pixels, "discretized-logistic" for 8-bit values; baselines/common.py).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch

FAMILIES = ("gan", "vae")


@runtime_checkable
class GenerativeModel(Protocol):
    """Every model: an `nn.Module` that trains on batches of real images and draws samples."""

    family: ClassVar[str]  # "gan" or "vae": which metrics apply (VAEs add the likelihood ones)
    Config: ClassVar[type]  # the hyperparameter dataclass (all fields with defaults); `config.latent_dim` is required
    config: object  # the instance the model was built with
    batches_per_step: int  # real batches of train.batch_size one train_step takes (5 for a WGAN critic schedule)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers of one training run, by name; the loop checkpoints and resumes them."""
        ...

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        """One training step on real images x, float (batches_per_step · B, C, H, W) in [0, 1] on the model's
        device: zero the gradients, backpropagate, step. Returns scalar tensors to log (losses), not synchronised."""
        ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples as uint8 (n, C, H, W), reproducible for a generator on the model's device; no gradients."""
        ...

    def decoder_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image in [0, 1], float (N, C, H, W), for latents z (N, config.latent_dim) ~ N(0, I): the f(z) of
        AIS's Gaussian observation model (Wu et al. 2017). Differentiable in z."""
        ...

    # from nn.Module: parameters, state_dict, load_state_dict, train, eval, to


@runtime_checkable
class LikelihoodModel(GenerativeModel, Protocol):
    """A VAE additionally gives the likelihood hooks of the evaluation (bench/likelihood.py)."""

    def observe(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] → the observations the likelihood is defined on (binarised, or 8-bit bin centres)."""
        ...

    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_q[log p(x|z)], KL(q(z|x) || p(z))) per observed image, (B,) each, nats."""
        ...

    def log_likelihood(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """A k-sample importance-weighted estimate of log p(x) per observed image, (B,), nats; ≥ the ELBO in
        expectation (Burda et al. 2016)."""
        ...

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) reconstructions of images x in [0, 1]: the decoder mean at the posterior mean."""
        ...


GAN_METHODS = ("optimizers", "train_step", "sample", "decoder_mean")
VAE_METHODS = GAN_METHODS + ("observe", "elbo_terms", "log_likelihood", "reconstruct")


def class_problems(cls: type) -> list[str]:
    """What a model class lacks of the contract, without building it: one line per problem (empty: none)."""
    import dataclasses

    import torch.nn as nn

    problems = []
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        problems.append(f"{getattr(cls, '__name__', cls)!r} is not a torch.nn.Module subclass")
    family = getattr(cls, "family", None)
    if family not in FAMILIES:
        problems.append(f"class attribute `family` must be 'gan' or 'vae', got {family!r}")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        problems.append("class attribute `Config` must be a dataclass of the hyperparameters")
    else:
        missing = [
            f.name
            for f in dataclasses.fields(config)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            problems.append(f"Config fields without a default: {', '.join(missing)} (every field needs one)")
        if "latent_dim" not in {f.name for f in dataclasses.fields(config)}:
            problems.append("Config has no `latent_dim` field (AIS and sampling draw z ~ N(0, I) of that size)")
    for name in VAE_METHODS if family == "vae" else GAN_METHODS:
        if not callable(getattr(cls, name, None)):
            problems.append(f"method `{name}` is missing")
    return problems
