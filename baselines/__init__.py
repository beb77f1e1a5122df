"""The baseline registry: one file per model, listed here by its suite name."""

from baselines.beta_vae import BetaVAE
from baselines.conv_vae import ConvVAE
from baselines.dcgan import DCGAN
from baselines.gan_mlp import GANMLP
from baselines.iwae import IWAE
from baselines.sngan import SNGAN
from baselines.vae_mlp import VAEMLP
from baselines.wgan_gp import WGANGP

MODELS = {
    "gan-mlp": GANMLP,
    "dcgan": DCGAN,
    "wgan-gp": WGANGP,
    "sngan": SNGAN,
    "vae-mlp": VAEMLP,
    "conv-vae": ConvVAE,
    "beta-vae": BetaVAE,
    "iwae": IWAE,
}


def build(name: str, config, image_shape: tuple[int, int, int], observation: str = "bernoulli"):
    """The model `name` for images of `image_shape`; VAEs get the dataset's observation model (the likelihood
    convention: "bernoulli" for binarised MNIST-family pixels, "discretized-logistic" for 8-bit CIFAR-10)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    cls = MODELS[name]
    if config is None:
        config = cls.Config()
    if cls.family == "vae":
        return cls(config, image_shape, observation)
    return cls(config, image_shape)
