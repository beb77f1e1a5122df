"""The matrix of a suite: its cells, what defines each one's result (its key), and which encoders it needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bench.config import BenchConfig, DomainConfig, EvalConfig, SuiteConfig, TrainConfig
from bench.eval.protocol import library_versions
from bench.schema import PROTOCOL_VERSION, SELECTION_ENCODER, SELECTION_RULE, SWEEP_SCORE_RULE
from bench.storage import json_digest


@dataclass(frozen=True)
class Cell:
    """One (model, dataset, seed) of a suite with everything that defines its result."""

    suite: str
    model: str
    dataset: str
    seed: int
    model_config: Any
    train: TrainConfig
    eval: EvalConfig
    domain: DomainConfig
    model_source: str = ""  # a plugin's package.module:Class ("" for a baseline): workers load the class from it
    trial: int = -1  # a sweep's trial number (bench/run/sweep.py): trained, then scored on the validation split only

    @property
    def name(self) -> str:
        if self.is_trial:
            return f"{self.model}/{self.dataset}/trial{self.trial}"
        return f"{self.model}/{self.dataset}/seed{self.seed}"

    @property
    def is_trial(self) -> bool:
        return self.trial >= 0

    def encoders(self) -> tuple[str, ...]:
        """Every encoder the cell needs, in the order they are built: those that score its samples
        (`eval.encoders`), then the one that selects its best checkpoint when that is another. The suite's preflight,
        the worker that runs the cell and the cell itself all ask this, and nothing else."""
        scoring = self.eval.encoders
        selection = (SELECTION_ENCODER,) if self.train.eval_every and SELECTION_ENCODER not in scoring else ()
        return scoring + selection

    def as_dict(self) -> dict[str, Any]:
        """Nested plain dict of everything that defines the cell (also what `config.toml` holds)."""
        cell = {"suite": self.suite, "model": self.model, "dataset": self.dataset, "seed": self.seed}
        if self.is_trial:
            cell["trial"] = self.trial
        return {
            "cell": cell,
            "model": dataclasses.asdict(self.model_config),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "features": {"domain": dataclasses.asdict(self.domain)},
        }

    def key(self, dataset_digest: str, *, with_seed: bool = True) -> str:
        """Hash of everything that defines the result: the `bench.cell` tag (or, without the seed, the variant).
        The protocol version and the protocol's library versions are in it: a change of either re-runs the cell
        instead of mixing old and new numbers."""
        spec = self.as_dict()
        del spec["cell"]["suite"]  # the same cell in two suites is the same experiment
        if not with_seed:
            del spec["cell"]["seed"]
        spec["dataset_digest"] = dataset_digest
        if self.model_source:  # a plugin: where its code comes from is part of what defines the result
            spec["cell"]["source"] = self.model_source
        spec["protocol_version"] = PROTOCOL_VERSION
        spec["versions"] = library_versions()
        spec["selection"] = SELECTION_RULE  # how the best checkpoint is chosen
        if self.is_trial:
            spec["trial_score"] = SWEEP_SCORE_RULE  # a trial's result is its validation score
        return json_digest(spec)


def expand(config: BenchConfig, suite: SuiteConfig) -> list[Cell]:
    """The suite's matrix in a stable order: dataset, then model, then seed."""
    return [
        Cell(suite.name, m, d, s, config.models[m], suite.train, suite.eval, config.domain, config.plugins.get(m, ""))
        for d in suite.datasets
        for m in suite.models
        for s in suite.seeds
    ]


def encoders_by_dataset(cells: list[Cell]) -> dict[str, tuple[str, ...]]:
    """The encoders each dataset's cells need (`Cell.encoders`), in order of first use."""
    needed: dict[str, dict[str, None]] = {}
    for cell in cells:
        needed.setdefault(cell.dataset, {}).update(dict.fromkeys(cell.encoders()))
    return {dataset: tuple(names) for dataset, names in needed.items()}
