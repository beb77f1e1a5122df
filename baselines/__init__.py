"""The baseline registry: one file per model, listed here by its suite name."""

from baselines.gan_mlp import GANMLP
from baselines.vae_mlp import VAEMLP

MODELS = {
    "gan-mlp": GANMLP,
    "vae-mlp": VAEMLP,
}


def build(name: str, config, image_shape: tuple[int, int, int]):
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name](config, image_shape)
