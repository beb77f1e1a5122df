"""bench.toml → frozen, typed dataclasses.

One dataclass per table; defaults live on the fields; unknown keys, wrong types and out-of-range values are
errors that name the file, the table and the key. Model hyperparameter tables are validated against the config
dataclass that sits beside each model in baselines/.

    [suites.NAME]            SuiteConfig  (datasets, models, seeds)
    [suites.NAME.train]      TrainConfig
    [suites.NAME.eval]       EvalConfig
    [suites.NAME.eval.ais]   AISConfig
    [models.NAME]            the model's own Config dataclass
    [models.NAME.search]     SearchDim per hyperparameter: the model's search space for `bench sweep`
    [suites.NAME.sweep]      SweepConfig  (trials per model, the sampler's seed)
    [features.domain]        DomainConfig (the recipe of the `domain` feature encoder)
    [[published]]            Published (numbers from papers, shown beside the leaderboard, never ranked)

A cell of a suite (what defines one result, and its key) is bench/run/matrix.py's.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import schema
from bench.typed_toml import ConfigError, build, check_keys, one_of, parse_value, positive, subtable

DEFAULT_CONFIG = "bench.toml"  # in the working folder (`bench init` writes it); else the copy that ships with genbench
ENCODERS = tuple(schema.ENCODERS)  # the feature encoders a suite may name
REFERENCE_SPLITS = ("train", "test")
BEST_METRICS = ("sample", "all")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
EXECUTORS = ("local", "inline", "ray")  # bench.run.executors.EXECUTORS has one class per name
AIS_SCHEDULES = ("sigmoid", "linear")
SEARCH_KINDS = ("log_uniform", "uniform", "choice")  # how a [models.NAME.search] entry draws its hyperparameter
TRIAL_SEED_BASE = 10_000  # a sweep's trial t trains with seed TRIAL_SEED_BASE + t: never one of a suite's seeds


@dataclass(frozen=True)
class TrainConfig:
    """The training schedule, owned by the runner (bench/train.py)."""

    steps: int = 2000  # optimisation steps (generator steps for GANs)
    batch_size: int = 64
    log_every: int = 50  # steps between logged training metrics
    sample_every: int = 500  # steps between sample grids
    checkpoint_every: int = 500  # steps between resumable checkpoints
    eval_every: int = 500  # steps between cheap FIDs (domain features) for the curve and the best checkpoint; 0 = off
    eval_samples: int = 1000  # samples per cheap FID
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast around each training step; weights and optimiser stay fp32)
    tf32: bool = False  # TF32 matmuls/convolutions while training on CUDA (evaluation features are always fp32)
    channels_last: bool = False  # NHWC memory format for the convolutional models
    compile: bool = False  # torch.compile the model's networks
    cuda_graph: bool = False  # capture each training step as one CUDA graph and replay it (CUDA only; off elsewhere)

    def __post_init__(self) -> None:
        positive(self, "steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "eval_samples")
        if self.cuda_graph and self.compile:
            raise ValueError("train.cuda_graph and train.compile cannot be combined; choose one of the two")
        one_of(self, "precision", PRECISIONS)
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 = no periodic evaluation), got {self.eval_every}")
        one_of(self, "device", DEVICES)


@dataclass(frozen=True)
class AISConfig:
    """Log-likelihood of GANs and VAEs by annealed importance sampling (bench/ais.py; Wu et al. 2017) under a
    Gaussian observation model whose σ is chosen on validation images. images = 0 switches it off."""

    images: int = 0  # test images scored: the first of the test split; 0 = no AIS
    chains: int = 16  # independent AIS chains per image (Wu et al. use 16)
    steps: int = 1000  # intermediate distributions T
    schedule: str = "sigmoid"  # sigmoid (Grosse et al. 2015) | linear
    leapfrog: int = 10  # leapfrog steps per HMC transition
    step_size: float = 0.1  # initial HMC step size of the pilot, adapted per image towards target_accept
    pilot_chains: int = 2  # chains per image of the pilot run that fixes each image's step sizes (then replayed)
    target_accept: float = 0.65
    sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4)  # candidate observation std (pixels in [0, 1])
    validation_images: int = 100  # the last images of the test split (disjoint from the scored ones) that choose σ
    validation_steps: int = 200  # intermediate distributions of the σ search
    bdmc_images: int = 16  # images simulated from the model for the BDMC gap; 0 = none
    batch_images: int = 100  # images per AIS batch (× chains rows through the decoder at once)
    # intermediate distributions of each VAE's AIS under its own observation model, the check against its IWAE
    # bound: AIS is the tighter estimate only with enough of them (on the quick suite's VAE, 100 fall 0.4–0.6 nats
    # below IWAE with k = 1000, 1000 reach it)
    own_steps: int = 1000

    def __post_init__(self) -> None:
        positive(
            self, "chains", "pilot_chains", "steps", "leapfrog", "step_size", "validation_steps", "batch_images",
            "own_steps",
        )  # fmt: skip
        if self.images < 0 or self.bdmc_images < 0 or self.validation_images < 0:
            raise ValueError("images, validation_images and bdmc_images must be >= 0")
        if self.steps < 2 or self.validation_steps < 2:
            raise ValueError("steps and validation_steps must be >= 2 (at least one HMC transition)")
        one_of(self, "schedule", AIS_SCHEDULES)
        if not 0.0 < self.target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept}")
        if not self.sigmas or any(s <= 0 for s in self.sigmas):
            raise ValueError(f"sigmas must be a non-empty list of positive numbers, got {list(self.sigmas)}")
        if len(self.sigmas) > 1 and self.images and not self.validation_images:
            raise ValueError("choosing σ from several sigmas needs validation_images > 0 (or give a single sigma)")


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol; every field here is part of the protocol fingerprint."""

    encoder: str = "domain"  # the first encoder: its sample metrics keep the plain names (fid, kid_mean, ...)
    extra_encoders: tuple[str, ...] = ()  # more encoders, each scoring the same samples: fid_dinov2, ...
    reference_split: str = "train"  # real images the samples are compared with
    num_samples: int = 2000  # generated images per evaluation
    batch_size: int = 500
    iwae_k: int = 1000  # importance samples for nll_iwae (Burda et al. use 5000)
    likelihood_images: int = 0  # test images for elbo/nll_iwae/bits_per_dim; 0 = the whole test split
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    prc_neighborhood: int = 3  # k of the k-NN balls (Kynkäänniemi et al. 2019)
    dc_neighborhood: int = 5  # k of density and coverage's k-NN balls (Naeem et al. 2020)
    copying_cells: int = 20  # k-means cells of the data-copying test C_T (Meehan et al. 2020)
    isc_splits: int = 10
    seed: int = 0  # evaluation seed: samples, binarisation of the test split, KID subsets
    # what the best checkpoint (selected on periodic FID) is scored on: "sample" = the sample metrics; "all" = also
    # the likelihoods (IWAE, AIS), a second run of the most expensive part of an evaluation
    best_metrics: str = "sample"
    # training images carved out (seeded) as the validation split that selects the best checkpoint: no model trains
    # on them, no reported number is scored on them (nor on the reference split they leave); 0 = no carve
    validation_images: int = 1000
    ais: AISConfig = field(default_factory=AISConfig)  # [suites.NAME.eval.ais]

    def __post_init__(self) -> None:
        positive(
            self,
            "num_samples",
            "batch_size",
            "iwae_k",
            "kid_subsets",
            "kid_subset_size",
            "prc_neighborhood",
            "dc_neighborhood",
            "copying_cells",
            "isc_splits",
        )
        for name in self.extra_encoders:
            if name not in ENCODERS:
                raise ValueError(f"extra_encoders: unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
        if self.encoder in self.extra_encoders or len(set(self.extra_encoders)) < len(self.extra_encoders):
            raise ValueError(
                f"extra_encoders {list(self.extra_encoders)} must not repeat an encoder or the first one "
                f"({self.encoder!r})"
            )
        if self.likelihood_images < 0:
            raise ValueError(f"likelihood_images must be >= 0 (0 = the whole test split), got {self.likelihood_images}")
        if self.validation_images < 0:
            raise ValueError(f"validation_images must be >= 0 (0 = no validation split), got {self.validation_images}")
        one_of(self, "encoder", ENCODERS)
        one_of(self, "reference_split", REFERENCE_SPLITS)
        one_of(self, "best_metrics", BEST_METRICS)
        if self.kid_subset_size > self.num_samples:
            raise ValueError(
                f"kid_subset_size ({self.kid_subset_size}) must not exceed num_samples ({self.num_samples})"
            )
        if self.isc_splits > self.num_samples:
            raise ValueError(f"isc_splits ({self.isc_splits}) must not exceed num_samples ({self.num_samples})")

    @property
    def encoders(self) -> tuple[str, ...]:
        """The encoders that score samples, the first one first (its metrics keep the plain names)."""
        return (self.encoder, *self.extra_encoders)

    @property
    def held_out_split(self) -> str:
        """The real split that is not the reference: the real-data row, the best-checkpoint selection, the copying
        test's unseen images."""
        return "test" if self.reference_split == "train" else "train"


@dataclass(frozen=True)
class DomainConfig:
    """Fixed recipe of the `domain` encoder: a small CNN trained on the dataset's own training labels."""

    steps: int = 1000  # optimisation steps (a fixed count, so tiny and large datasets get comparable training)
    batch_size: int = 128
    lr: float = 1e-3
    feature_dim: int = 64  # width of the feature layer used for FID/KID/precision/recall
    seed: int = 0
    # below this test accuracy the encoder is not trusted and evaluation stops: one floor for every dataset,
    # or a table of floors by dataset name (a dataset missing from the table has no floor)
    min_test_accuracy: float | dict[str, float] = 0.9

    def __post_init__(self) -> None:
        positive(self, "steps", "batch_size", "lr", "feature_dim")
        floors = self.min_test_accuracy
        for name, floor in floors.items() if isinstance(floors, dict) else [("", floors)]:
            if not 0.0 <= floor <= 1.0:
                where = f"[{name}]" if name else ""
                raise ValueError(f"min_test_accuracy{where} must be in [0, 1], got {floor}")

    def floor(self, dataset: str) -> float:
        """The accuracy floor of the domain encoder on `dataset`."""
        floors = self.min_test_accuracy
        return floors.get(dataset, 0.0) if isinstance(floors, dict) else floors


@dataclass(frozen=True)
class SweepConfig:
    """`bench sweep`: equal tuning budgets (Lucic et al. 2018). Each model of the suite gets `trials` configurations
    drawn from its search space ([models.NAME.search]) by a sampler seeded with `seed`; each trial is a cell scored
    on the validation split; the best configuration is retrained over the suite's seeds under the full protocol."""

    trials: int = 8  # the budget B: configurations tried per model
    seed: int = 0  # the sampler's seed: the same seed draws the same configurations
    bootstrap: int = 2000  # resamples of the trials behind the budget figure's band

    def __post_init__(self) -> None:
        positive(self, "trials", "bootstrap")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class SearchDim:
    """One hyperparameter's search space: `log_uniform = [low, high]`, `uniform = [low, high]` or
    `choice = [a, b, ...]` ([models.NAME.search] in bench.toml)."""

    name: str
    kind: str  # SEARCH_KINDS
    values: tuple  # (low, high), or the choices

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return value in self.values
        return self.values[0] <= value <= self.values[1]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} ∈ {{{', '.join(map(str, self.values))}}}"
        how = "log-uniform" if self.kind == "log_uniform" else "uniform"
        return f"{self.name} ~ {how}[{self.values[0]:g}, {self.values[1]:g}]"

    def as_dict(self) -> dict:
        return {self.kind: list(self.values)}


def parse_search(table: dict, model_config, origin: str, where: str) -> dict[str, SearchDim]:
    """A [models.NAME.search] table: one entry per hyperparameter of the model's Config, each a one-key table
    ({log_uniform = [lo, hi]}, {uniform = [lo, hi]} or {choice = [...]}). That the range holds the configured
    (paper's) value is checked when a sweep draws from it (bench.run.sweep.sample_trials), not here: a `--set` of
    the value for a `bench run` is not a sweep's business."""
    fields = {f.name: f for f in dataclasses.fields(model_config)}
    out = {}
    for name, spec in table.items():
        at = f"{origin}: [{where}] {name}"
        if name not in fields:
            raise ConfigError(f"{at}: not a hyperparameter of the model; known: {', '.join(fields)}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
            raise ConfigError(
                f"{at}: must be one of {{log_uniform = [low, high]}}, {{uniform = [low, high]}}, "
                f"{{choice = [a, b, ...]}}; got {spec!r}"
            )
        kind, values = next(iter(spec.items()))
        default = getattr(model_config, name)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}: {kind} takes a non-empty list, got {values!r}")
        if kind == "choice":
            if any(
                type(v) is not type(default) and not (isinstance(default, float) and isinstance(v, int)) for v in values
            ):
                raise ConfigError(f"{at}: every choice must be a {type(default).__name__} like its value {default!r}")
            values = [type(default)(v) for v in values]
        else:
            if isinstance(default, bool) or not isinstance(default, float):
                raise ConfigError(
                    f"{at}: {kind} draws real numbers but {name} is {type(default).__name__}; use choice = [...]"
                )
            if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
                raise ConfigError(f"{at}: {kind} takes [low, high] with low < high, got {values!r}")
            if kind == "log_uniform" and values[0] <= 0:
                raise ConfigError(f"{at}: log_uniform needs low > 0, got {values[0]}")
            values = [float(v) for v in values]
        out[name] = SearchDim(name, kind, tuple(values))
    return out


@dataclass(frozen=True)
class SuiteConfig:
    """A benchmark matrix: datasets × models × seeds, with one training schedule and one evaluation protocol."""

    name: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    description: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)  # [suites.NAME.sweep]: what `bench sweep` does

    def __post_init__(self) -> None:
        for key in ("datasets", "models", "seeds"):
            values = getattr(self, key)
            if not values:
                raise ValueError(f"{key} must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{key} has duplicates: {list(values)}")
        if self.train.eval_every and not self.eval.validation_images:
            raise ValueError(
                "train.eval_every selects the best checkpoint on the validation split: set eval.validation_images > 0 "
                "(training images carved out for it), or train.eval_every = 0 (no selection)"
            )
        if any(seed >= TRIAL_SEED_BASE or seed < 0 for seed in self.seeds):
            raise ValueError(f"seeds must lie in [0, {TRIAL_SEED_BASE}) (a sweep's trials train with the seeds above)")


PUBLISHED_METRICS = ("fid", "kid_mean", "is_mean", "precision", "recall", "elbo", "nll_iwae", "bits_per_dim")


@dataclass(frozen=True)
class Published:
    """A published number shown beside genbench's rows ([[published]] in bench.toml): never ranked, always cited."""

    dataset: str
    model: str  # as the paper names it
    metric: str  # a genbench metric name: the row shows in that column
    value: float
    protocol: str  # how the paper measured it, in words
    citation: str
    std: float | None = None  # the paper's spread, if it gives one
    encoder: str = ""  # for sample metrics: only beside tables with this encoder ("" = any)

    def __post_init__(self) -> None:
        one_of(self, "metric", PUBLISHED_METRICS)
        if self.encoder:
            one_of(self, "encoder", ENCODERS)
        for key in ("model", "protocol", "citation"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key} must not be empty")


@dataclass(frozen=True)
class BenchConfig:
    path: Path
    suites: dict[str, SuiteConfig]
    models: dict[str, Any]  # model name -> that model's Config instance
    domain: DomainConfig
    published: tuple[Published, ...] = ()
    plugins: dict[str, str] = dataclasses.field(default_factory=dict)  # plugin name -> package.module:Class
    search: dict[str, dict[str, SearchDim]] = dataclasses.field(default_factory=dict)  # model -> its search space

    def suite(self, name: str) -> SuiteConfig:
        if name not in self.suites:
            raise ConfigError(f"unknown suite {name!r} in {self.path.name}; known suites: {', '.join(self.suites)}")
        return self.suites[name]


# ---------------------------------------------------------------------------------------------------------- loading


def default_path() -> Path:
    """./bench.toml when the working folder has one, else the default configuration installed with genbench."""
    if Path(DEFAULT_CONFIG).is_file():
        return Path(DEFAULT_CONFIG)
    from importlib.resources import files

    return Path(str(files("bench") / DEFAULT_CONFIG))


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), suite: str | None = None):
    """Read and validate a bench.toml (`default_path()` when `path` is None); `overrides` are `--set KEY=VALUE`
    strings applied to `suite` first."""
    path = default_path() if path is None else Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found; pass an existing --config, or run `bench init` to write the default "
            "configuration here and edit it"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path.name} is not valid TOML: {e}") from None
    origin = path.name
    if overrides:
        raw = apply_overrides(raw, overrides, suite)
        origin = f"{path.name} (with --set {' '.join(overrides)})"
    return __build_config(raw, path, origin)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], suite: str | None) -> dict:
    """Apply `KEY=VALUE` overrides to the raw TOML document.

    KEY is a suite field (`seeds`, `models`, `datasets`, `train.steps`, `eval.num_samples`, …) applied to the
    selected suite, or a full path (`models.gan-mlp.lr`, `features.domain.steps`). VALUE is a TOML value;
    a bare word is a string. Types are checked when the result is validated.
    """
    raw = copy.deepcopy(raw)
    suite_fields = {f.name for f in dataclasses.fields(SuiteConfig)} - {"name"}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE; for example --set train.steps=500")
        parts = key.split(".")
        if parts[0] in suite_fields and not (parts[0] == "models" and len(parts) > 1):
            if suite is None:
                raise ConfigError(f"--set {key} applies to a suite; choose one with --suite")
            parts = ["suites", suite, *parts]
        elif parts[0] not in ("models", "features", "suites"):
            allowed = sorted(suite_fields - {"train", "eval", "sweep"}) + [
                "train.KEY",
                "eval.KEY",
                "sweep.KEY",
                "models.MODEL.KEY",
                "features.domain.KEY",
            ]
            raise ConfigError(f"--set {key}: unknown key {parts[0]!r}; allowed: {', '.join(allowed)}")
        table = raw
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a table")
        table[parts[-1]] = parse_value(text.strip())
    return raw


def __build_config(raw: dict, path: Path, origin: str) -> BenchConfig:
    import baselines  # the registry knows each model's Config dataclass
    from bench.data import DATASETS

    if "references" in raw:
        raise ConfigError(
            f"{origin}: [[references]] is now [[published]] (numbers from papers); rename the tables in {path.name}"
        )
    check_keys(raw, {"suites", "models", "features", "published", "plugins"}, origin, "top level")
    plugin_table = subtable(raw, "plugins", origin, "plugins")
    bad = {k: v for k, v in plugin_table.items() if not isinstance(v, str)}
    if bad:
        raise ConfigError(f"{origin}: [plugins] values must be strings 'package.module:Class', got {bad}")
    try:
        plugins = baselines.load_plugins(plugin_table)
    except baselines.PluginError as e:
        raise ConfigError(str(e)) from None
    MODELS = baselines.models()
    model_tables = subtable(raw, "models", origin, "models")
    for name in model_tables:
        if name not in MODELS:
            raise ConfigError(f"{origin}: [models.{name}] unknown model; known models: {', '.join(MODELS)}")
    models, search = {}, {}
    for name, cls in MODELS.items():
        table = dict(subtable(model_tables, name, origin, f"models.{name}"))
        space = subtable(table, "search", origin, f"models.{name}.search")
        table.pop("search", None)
        models[name] = build(cls.Config, table, origin, f"models.{name}")
        if space:
            search[name] = parse_search(space, models[name], origin, f"models.{name}.search")
    features = subtable(raw, "features", origin, "features")
    check_keys(features, {"domain"}, origin, "features")
    domain = build(DomainConfig, subtable(features, "domain", origin, "features.domain"), origin, "features.domain")
    if isinstance(domain.min_test_accuracy, dict):
        for name in domain.min_test_accuracy:
            if name not in DATASETS:
                raise ConfigError(
                    f"{origin}: [features.domain] min_test_accuracy: unknown dataset {name!r}; "
                    f"known: {', '.join(DATASETS)}"
                )

    suites = {}
    for name, table in subtable(raw, "suites", origin, "suites").items():
        where = f"suites.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{where}] must be a table")
        table = dict(table)
        table["train"] = build(
            TrainConfig, subtable(table, "train", origin, f"{where}.train"), origin, f"{where}.train"
        )
        evaluation = dict(subtable(table, "eval", origin, f"{where}.eval"))
        _renamed(evaluation, origin, f"{where}.eval")
        evaluation["ais"] = build(
            AISConfig, subtable(evaluation, "ais", origin, f"{where}.eval.ais"), origin, f"{where}.eval.ais"
        )
        table["eval"] = build(EvalConfig, evaluation, origin, f"{where}.eval")
        table["sweep"] = build(
            SweepConfig, subtable(table, "sweep", origin, f"{where}.sweep"), origin, f"{where}.sweep"
        )
        suite = build(SuiteConfig, {**table, "name": name}, origin, where)
        for key, known in (("datasets", DATASETS), ("models", MODELS)):
            for value in getattr(suite, key):
                if value not in known:
                    raise ConfigError(
                        f"{origin}: [{where}] {key}: unknown {key[:-1]} {value!r}; known: {', '.join(known)}"
                    )
        suites[name] = suite
    if not suites:
        raise ConfigError(f"{origin}: no [suites.NAME] table; define at least one suite")
    entries = raw.get("published", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{origin}: published must be an array of tables ([[published]])")
    for i, entry in enumerate(entries):
        _renamed(entry, origin, f"published #{i + 1}")
    published = tuple(build(Published, entry, origin, f"published #{i + 1}") for i, entry in enumerate(entries))
    for i, ref in enumerate(published):
        if ref.dataset not in DATASETS:
            raise ConfigError(
                f"{origin}: [published #{i + 1}] dataset: unknown dataset {ref.dataset!r}; known: {', '.join(DATASETS)}"
            )
    return BenchConfig(
        path=path, suites=suites, models=models, domain=domain, published=published, plugins=plugins, search=search
    )


# keys of earlier versions: a clear error that names the new key (the protocol version changed with them)
RENAMED = {"extractor": "encoder", "extra_extractors": "extra_encoders"}


def _renamed(table: dict, origin: str, where: str) -> None:
    for old, new in RENAMED.items():
        if old in table:
            raise ConfigError(
                f"{origin}: [{where}] {old} is now {new} (genbench calls feature networks encoders); rename the key"
            )
