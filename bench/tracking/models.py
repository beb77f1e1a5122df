"""Models a cell logs (`model/final`, `model/best`) as MLflow PyTorch models, and loading them back."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.tracking.store import TrackingError, _client, _quiet_logger


def portable_copy(model):
    """What `Run.log_model` pickles: a CPU copy of `model` in eval mode, its parametrisations baked in."""
    import copy

    return _baked(copy.deepcopy(model).cpu().eval())


def _baked(model):
    """`model` with every parametrisation (sngan's spectral norm, a plugin's weight norm) replaced by the weight it
    computes now: torch refuses to pickle parametrised modules. The logged model computes the same function in eval
    mode (samples and discriminator outputs are unchanged); resuming training uses the run's state-dict checkpoints,
    which keep the parametrisations."""
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            # removing a parametrisation deletes its property from the module's class, which a deep copy shares
            # with the original model: give this module a class of its own first
            cls = type(module)
            own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, own)
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def save_model(model, local: Path, metadata: dict[str, str]) -> Path:
    """`model` as an MLflow PyTorch model in the folder `local`, which a run then logs as its artifact `model/final`
    or `model/best`, so that `mlflow.pytorch.load_model("runs:/<run id>/model/final")` returns it in a fresh process.
    Pickled whole (the class is importable from the installed genbench; a plugin's module travels with it as code);
    on the CPU, so any machine loads it."""
    from importlib.metadata import version

    import mlflow.pytorch

    cls = type(model)
    code = []
    if not cls.__module__.startswith("baselines."):  # a plugin: its top-level module or package travels along
        top = sys.modules[cls.__module__.split(".")[0]]
        file = Path(top.__file__)
        code = [str(file.parent if file.name == "__init__.py" else file)]
    with _quiet_logger("mlflow.pytorch"):
        mlflow.pytorch.save_model(
            portable_copy(model),
            str(local),
            serialization_format="pickle",
            pip_requirements=[f"torch=={version('torch')}", f"genbench=={version('genbench')}"],
            code_paths=code or None,
            metadata=metadata,
        )
    return local


def load_model(uri: str, run_id: str, path: str, device: str = "cpu"):
    """The model a cell logged at `path` (schema.MODEL_FINAL / MODEL_BEST), on `device`. TrackingError when the run
    or the model does not exist."""
    client = _client(uri)
    try:
        client.get_run(run_id)
    except Exception as e:
        raise TrackingError(
            f"no run {run_id!r} in {uri} ({type(e).__name__}); copy a run id from the MLflow UI"
        ) from None
    parent = str(Path(path).parent)
    if f"{path}/MLmodel" not in {a.path for a in client.list_artifacts(run_id, path)}:
        have = [a.path for a in client.list_artifacts(run_id, parent)]
        raise TrackingError(
            f"run {run_id} has no logged model at {path!r} (it has {have or 'none'}): runs finished before genbench "
            "logged models, real-data and external runs have none; use a cell run of `bench run`"
        )
    import mlflow
    import mlflow.pytorch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one model: the bar only adds noise
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with _quiet_logger("mlflow.pytorch"):
            return mlflow.pytorch.load_model(f"runs:/{run_id}/{path}", map_location=device)
    finally:
        mlflow.set_tracking_uri(previous)
