"""What the baselines of one family share: image conversion, the observation models of the VAEs' decoders, the
importance-weighted likelihood, and the latent-noise and sampling plumbing of the GANs.

Shapes: images are (B, C, H, W); decoder outputs are observation parameters (..., P·C, H, W) with P parameters per
pixel (P = 1 Bernoulli logit; P = 2 mean and log-scale of a discretised logistic).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → uint8 in [0, 255] (the contract of every `sample` and `reconstruct`)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) for binary x, summed over all but the leading batch dimensions."""
    lp = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    return lp.flatten(start_dim=lp.dim() - x.dim() + 1).sum(-1)


def discretized_logistic_log_prob(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log P(x) of 8-bit pixels x ∈ {0, 1/255, …, 1} under a logistic discretised into 256 bins, the edge bins
    taking the tails (Kingma et al. 2016; Salimans et al. 2017), summed over all but the leading batch dims.
    The 256 probabilities of each pixel sum to one, so the result is a proper discrete log-likelihood."""
    event_dims = x.dim() - 1  # (C, H, W) of x (B, C, H, W)
    x = x.expand_as(mean)
    half_bin = 0.5 / 255
    inv_scale = torch.exp(-log_scale)
    centered = x - mean
    upper, lower = inv_scale * (centered + half_bin), inv_scale * (centered - half_bin)
    log_cdf_upper = upper - F.softplus(upper)  # log σ(upper): the bin of x = 0 takes (−∞, half_bin]
    log_sf_lower = -F.softplus(lower)  # log(1 − σ(lower)): the bin of x = 1 takes [1 − half_bin, ∞)
    delta = torch.sigmoid(upper) - torch.sigmoid(lower)
    mid = inv_scale * centered  # where the bin mass underflows, the density at its centre times its width
    log_mid = mid - log_scale - 2 * F.softplus(mid) - math.log(255)
    log_bin = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_mid)
    lp = torch.where(x < half_bin, log_cdf_upper, torch.where(x > 1 - half_bin, log_sf_lower, log_bin))
    return lp.flatten(start_dim=lp.dim() - event_dims).sum(-1)


def normal_log_prob(
    z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension. A float logvar stays a Python number: a
    tensor made from it on a GPU would be a host-to-device copy, which a CUDA graph cannot capture (IWAE's prior)."""
    inv_var = math.exp(-logvar) if isinstance(logvar, int | float) else torch.exp(-logvar)
    return (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * inv_var)).sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form (Kingma & Welling 2014, appendix B), per row."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarisation: each pixel ~ Bernoulli(intensity) (Salakhutdinov & Murray 2008; Burda et al. 2016)."""
    return torch.bernoulli(x, generator=generator)


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on `loss`: zero the gradients, backpropagate, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# ------------------------------------------------------------------------------------------ observation models


class Bernoulli:
    """p(x|z) over binarised pixels (the MNIST family): NLL in nats of binary images, comparable with Burda et al."""

    name = "bernoulli"
    params_per_channel = 1

    def observe(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return binarize(x, generator)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class DiscretizedLogistic:
    """p(x|z) over 8-bit pixels (CIFAR-10): a per-pixel logistic discretised into 256 bins, so bits/dim is the
    discrete quantity the literature reports. Mean σ(m) ∈ (0, 1); log-scale clamped below at −7 (Salimans et al.)."""

    name = "discretized-logistic"
    params_per_channel = 2

    def observe(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return (x * 255).round() / 255  # the data are already 8-bit; this pins them to the bin centres

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = params.chunk(2, dim=-3)  # (..., C, H, W) each
        return torch.sigmoid(m), s.clamp_min(-7.0)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return discretized_logistic_log_prob(*self._split(params), x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._split(params)[0]  # the logistic's location (its median; the discretised mean differs by ≤ a bin)


OBSERVATIONS = {"bernoulli": Bernoulli, "discretized-logistic": DiscretizedLogistic}


def observation_model(name: str) -> Bernoulli | DiscretizedLogistic:
    if name not in OBSERVATIONS:
        raise ValueError(f"unknown observation model {name!r}; known: {', '.join(OBSERVATIONS)}")
    return OBSERVATIONS[name]()


# ------------------------------------------------------------------------------------------------------- VAEs


class LatentVariableModel:
    """The likelihood side of every VAE, written once: the model provides `encode(x) -> (mu, logvar)`,
    `decode(z) -> observation params`, `observation`, `config.latent_dim` and `config.iwae_chunk`."""

    family = "vae"
    batches_per_step = 1  # the contract (baselines/contract.py): real batches per train_step

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {"vae": torch.optim.Adam(self.parameters(), lr=c.lr)}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x): the encoder's output split into mean and log-variance, (B, L) each."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """p(x|z): observation params (..., P·C, H, W) for latents (..., L)."""
        return self.decoder(z)

    def elbo_step(
        self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], beta: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """One Adam step on −(E_q[log p(x|z)] − β·KL) for a batch x in [0, 1]; β = 1 is the ELBO."""
        log_px, kl = self.elbo_terms(self.observe(x))
        loss = (beta * kl - log_px).mean()
        descend(optimizers["vae"], loss)
        rate, distortion = kl.mean().detach(), -log_px.mean().detach()
        logs = {"loss": loss.detach(), "rate": rate, "distortion": distortion}
        if beta != 1.0:
            logs["elbo"] = -(rate + distortion)
        return logs

    def observe(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] → the observations the likelihood is defined on."""
        return self.observation.observe(x, generator)

    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_q[log p(x|z)] by one reparameterised sample, KL(q(z|x) || p(z)) analytic), per image: the negative
        distortion and the rate (Alemi et al. 2018)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # (B, L)
        return self.observation.log_prob(self.decode(z), x), gaussian_kl(mu, logvar)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Single-sample ELBO per image (nats), with the analytic KL (Kingma & Welling 2014)."""
        log_px, kl = self.elbo_terms(x)
        return log_px - kl

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """log p(x, z_i) − log q(z_i|x) for k posterior samples, (k, B); differentiable (the IWAE objective)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype) * (0.5 * logvar).exp()  # (k, B, L)
        return self.observation.log_prob(self.decode(z), x) + normal_log_prob(z) - normal_log_prob(z, mu, logvar)

    def log_likelihood(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) with k samples from q(z|x) (Burda et al. 2016, eq. 8), per
        image; evaluated `iwae_chunk` samples at a time (memory, not math)."""
        chunk = self.config.iwae_chunk
        log_w = torch.cat([self.log_weights(x, min(chunk, k - i)) for i in range(0, k, chunk)])  # (k, B)
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    def decoder_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1] for latents (N, L): the f(z) of AIS's Gaussian observation model."""
        return self.observation.mean(self.decode(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, L) → the decoder's mean images in [0, 1] (N, C, H, W): what the logged model's pyfunc
        `predict(z)` returns."""
        return self.decoder_mean(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return to_uint8(self.observation.mean(self.decode(mu)))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means of z ~ N(0, I), as uint8 images (n, C, H, W)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, device=device, generator=generator)
        return to_uint8(self.observation.mean(self.decode(z)))


# ------------------------------------------------------------------------------------------------------- GANs


class ImageGenerator:
    """The sampling side of every GAN: `self.generator(z)` maps N(0, I) latents to images in [−1, 1] or [0, 1]
    (`output_range`)."""

    family = "gan"
    batches_per_step = 1  # the contract (baselines/contract.py); critic schedules (wgan-gp, sngan) set n_critic
    output_range = (-1.0, 1.0)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam(lr, (beta1, beta2)) for each network, from the model's config."""
        c = self.config
        betas = (c.beta1, c.beta2)
        return {
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=c.lr, betas=betas),
            "g": torch.optim.Adam(self.generator.parameters(), lr=c.lr, betas=betas),
        }

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.config.latent_dim, device=device, generator=generator)

    def to_model_range(self, x: torch.Tensor) -> torch.Tensor:
        """Batches arrive in [0, 1]; map them to the generator's output range."""
        lo, hi = self.output_range
        return x * (hi - lo) + lo

    def decoder_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The generator's image rescaled to [0, 1] for latents (N, L): the f(z) of AIS's Gaussian observation model
        (Wu et al. 2017)."""
        lo, hi = self.output_range
        return (self.generator(z) - lo) / (hi - lo)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, L) → the generator's images in [0, 1] (N, C, H, W): what the logged model's pyfunc
        `predict(z)` returns."""
        return self.decoder_mean(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        lo, hi = self.output_range
        return to_uint8((self.generator(self.noise(n, generator)) - lo) / (hi - lo))  # (n, C, H, W) uint8


def critic_generator_step(model, n: int, optimizers: dict[str, torch.optim.Optimizer]) -> torch.Tensor:
    """The generator update of wgan-gp and sngan: minimise −D(G(z)) over n latents; returns the loss."""
    g_loss = -model.discriminator(model.generator(model.noise(n))).mean()
    descend(optimizers["g"], g_loss)
    return g_loss


def upsampling_plan(height: int) -> tuple[int, int]:
    """(base resolution, number of ×2 upsamplings) for a convolutional generator: 28 → (7, 2), 32 → (4, 3)."""
    base, n_up = height, 0
    while base % 2 == 0 and base // 2 >= 4:
        base, n_up = base // 2, n_up + 1
    return base, n_up


def dcgan_init(module: nn.Module) -> None:
    """Weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02) (Radford et al. 2016, section 4)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def split_batches(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """A step's real images (n·B, C, H, W) → n batches of B, one per discriminator update."""
    return x.chunk(n)


# ------------------------------------------------------------------ networks and steps shared by two baselines


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(x) − log(1 − D(G(z))) (Goodfellow et al. 2014, eq. 1)."""
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating −log D(G(z)) (Goodfellow et al. 2014, section 3)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def nonsaturating_step(model, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
    """One discriminator and one generator update on a batch x in [0, 1], (B, C, H, W): the discriminator on
    eq. 1 of Goodfellow et al. 2014, the generator on the non-saturating loss (also dcgan's step)."""
    real = model.to_model_range(x)
    fake = model.generator(model.noise(len(x)))
    real_logits, fake_logits = model.discriminator(real), model.discriminator(fake.detach())
    d_loss = discriminator_loss(real_logits, fake_logits)
    descend(optimizers["d"], d_loss)

    g_loss = generator_loss(model.discriminator(fake))
    descend(optimizers["g"], g_loss)
    return {
        "d_loss": d_loss.detach(),
        "g_loss": g_loss.detach(),
        "d_real": torch.sigmoid(real_logits).mean().detach(),
        "d_fake": torch.sigmoid(fake_logits).mean().detach(),
    }


class DCGenerator(nn.Module):
    """DCGAN's generator (also wgan-gp's): fractionally strided convolutions with batch norm to a tanh image."""

    def __init__(self, c, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, _ = image_shape
        base, n_up = upsampling_plan(height)
        width = c.g_channels * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(c.latent_dim, width, base, 1, 0, bias=False),  # (B, W, base, base)
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):  # each doubles the resolution and halves the width
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2)]
            layers += [nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]  # (B, C, H, W) in [−1, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCDiscriminator(nn.Module):
    """Strided convolutions to a single logit; `batchnorm=False` gives WGAN-GP's critic (Gulrajani et al. 2017)."""

    def __init__(self, c, image_shape: tuple[int, int, int], batchnorm: bool = True):
        super().__init__()
        channels, height, _ = image_shape
        base, n_down = upsampling_plan(height)
        width = c.d_channels
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]  # no BN on input
        for _ in range(n_down - 1):
            norm = nn.BatchNorm2d(width * 2) if batchnorm else nn.Identity()
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=not batchnorm), norm, nn.LeakyReLU(0.2, True)]
            width *= 2
        # (B, 1, 1, 1) logit of "real"; a critic's output bias cancels in D(x) − D(G(z)) and gets no gradient
        layers += [nn.Conv2d(width, 1, base, 1, 0, bias=batchnorm)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B,)


class ConvLatentModel(LatentVariableModel, nn.Module):
    """conv-vae's networks: ConvEncoder and ConvDecoder over the dataset's observation model (conv-vae and beta-vae
    differ only in their objective, `train_step`)."""

    def __init__(self, config, image_shape: tuple[int, int, int], observation: str = "bernoulli"):
        super().__init__()
        self.config, self.image_shape = config, image_shape
        self.observation = observation_model(observation)
        self.encoder = ConvEncoder(config, image_shape)
        self.decoder = ConvDecoder(config, image_shape, self.observation.params_per_channel * image_shape[0])


class ConvEncoder(nn.Module):
    """conv-vae's and beta-vae's encoder: 4×4 stride-2 convolutions, a fully connected layer, (mu, logvar)."""

    def __init__(self, c, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, _ = image_shape
        base, n_down = upsampling_plan(height)
        layers: list[nn.Module] = []
        width_in = channels
        for i in range(n_down):
            width = c.channels * 2**i
            layers += [nn.Conv2d(width_in, width, 4, 2, 1), nn.ReLU(True)]
            width_in = width
        layers += [nn.Flatten(), nn.Linear(width_in * base * base, c.hidden), nn.ReLU(True)]
        layers += [nn.Linear(c.hidden, 2 * c.latent_dim)]  # (B, 2L): mu, logvar
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """The encoder's mirror image, to the observation model's parameters."""

    def __init__(self, c, image_shape: tuple[int, int, int], out_channels: int):
        super().__init__()
        _, height, _ = image_shape
        self.base, n_up = upsampling_plan(height)
        self.width = c.channels * 2 ** (n_up - 1)
        self.project = nn.Sequential(
            nn.Linear(c.latent_dim, c.hidden),
            nn.ReLU(True),
            nn.Linear(c.hidden, self.width * self.base * self.base),
            nn.ReLU(True),
        )
        layers: list[nn.Module] = []
        width = self.width
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, out_channels, 4, 2, 1)]  # (B, P·C, H, W) observation params
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]  # (B,) or (k, B) when importance sampling
        h = self.project(z).view(-1, self.width, self.base, self.base)
        out = self.net(h)
        return out.view(*lead, *out.shape[1:])
