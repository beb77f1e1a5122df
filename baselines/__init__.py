"""The model registry: the baselines, one file per model, listed here by their suite names; and plugins, models
outside this repository that join a suite through the `genbench.models` entry point group or a bench.toml
`[plugins]` table naming `package.module:Class` (README, "Benchmark your own model"). Every model, baseline or
plugin, satisfies the contract in baselines/contract.py."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from baselines.beta_vae import BetaVAE
from baselines.contract import class_problems
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

ENTRY_POINT_GROUP = "genbench.models"
BASELINE = "a genbench baseline"


class PluginError(ValueError):
    """A plugin cannot be loaded or breaks the contract; the message says which and what to do."""


_plugins: dict[str, tuple[type, str]] = {}  # name → (class, "package.module:Class"), loaded so far


def load_class(spec: str, name: str, where: str) -> type:
    """The class `package.module:Class` of plugin `name`, checked against the contract's static part."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PluginError(f"{where}: model {name!r}: {spec!r} is not of the form package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or an error inside the plugin's module
        raise PluginError(
            f"{where}: model {name!r}: cannot import {module_name!r} ({type(e).__name__}: {e}); install the "
            "package (pip install -e FOLDER) or put its folder on PYTHONPATH"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise PluginError(f"{where}: model {name!r}: module {module_name!r} has no attribute {attr!r}")
    problems = class_problems(cls)
    if problems:
        raise PluginError(f"{where}: model {name!r} ({spec}) breaks the model contract: {'; '.join(problems)}")
    return cls


def register(name: str, spec: str, where: str = "bench.toml [plugins]") -> type:
    """Make plugin `name` known in this process (idempotent for the same spec)."""
    if name in MODELS:
        raise PluginError(f"{where}: plugin {name!r} has the name of a baseline; choose another name")
    if name in _plugins:
        cls, known = _plugins[name]
        if known != spec:
            raise PluginError(f"{where}: model {name!r} is both {known} and {spec}; one name, one class")
        return cls
    cls = load_class(spec, name, where)
    _plugins[name] = (cls, spec)
    return cls


def discover() -> dict[str, str]:
    """The models installed packages declare in the `genbench.models` entry point group: name → spec."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugins(table: dict[str, str] | None = None) -> dict[str, str]:
    """Register the entry-point plugins and those of a bench.toml `[plugins]` table; returns name → spec."""
    found = {name: (spec, f"entry point {ENTRY_POINT_GROUP}") for name, spec in discover().items()}
    found.update({name: (spec, "bench.toml [plugins]") for name, spec in (table or {}).items()})
    for name, (spec, where) in found.items():
        register(name, spec, where)
    return {name: spec for name, (spec, _) in found.items()}


def models() -> dict[str, type]:
    """Every model known in this process: the baselines, then the plugins loaded so far."""
    return {**MODELS, **{name: cls for name, (cls, _) in _plugins.items()}}


def source(name: str) -> str:
    """Where model `name` comes from: the baselines, or a plugin's package.module:Class."""
    return BASELINE if name in MODELS else _plugins[name][1] if name in _plugins else "unknown"


def get(name: str, spec: str = "") -> type:
    """The class of model `name`; `spec` (a plugin's package.module:Class) registers it first, e.g. in a worker
    process that did not read bench.toml."""
    if spec and name not in MODELS:
        register(name, spec, "cell")
    known = models()
    if name not in known:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(known)}")
    return known[name]


def build(name: str, config, image_shape: tuple[int, int, int], observation: str = "bernoulli", spec: str = ""):
    """The model `name` for images of `image_shape`; VAEs get the dataset's observation model (the likelihood
    convention: "bernoulli" for binarised MNIST-family pixels, "discretized-logistic" for 8-bit CIFAR-10)."""
    cls = get(name, spec)
    if config is None:
        config = cls.Config()
    if cls.family == "vae":
        return cls(config, image_shape, observation)
    return cls(config, image_shape)
