"""The models a cell logs (its final and best checkpoints) as MLflow 3 LoggedModels with the PyTorch flavour, and
loading them back."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import schema
from bench.tracking.store import TrackingError, _client, no_progress_bars


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
    """`model` as an MLflow PyTorch model in the folder `local` (what `Run.log_model` uploads as a LoggedModel), so
    that `mlflow.pytorch.load_model("models:/<model id>")` returns it in a fresh process, for MLflow's users (MLflow
    warns that loading a pickled model runs code: genbench itself never loads it, see
    bench.run.checkpoints.load_logged). Pickled whole, with the `baselines` package (and a plugin's module) as its
    code, so it loads where torch is installed and genbench is not; its one pip requirement is torch. On the CPU,
    so any machine loads it. Its signature is latents (N, latent_dim) float32 → images (N, C, H, W) float32 in
    [0, 1]: the pyfunc flavour's `predict(z)` calls the model's `forward(z)` (the baselines' decoder mean)."""
    from importlib.metadata import version

    import mlflow.pytorch

    import baselines

    cls = type(model)
    code = [str(Path(baselines.__file__).parent)]  # the model zoo (torch only) travels along: no genbench needed
    if not cls.__module__.startswith("baselines."):  # a plugin: its top-level module or package travels along
        top = sys.modules[cls.__module__.split(".")[0]]
        file = Path(top.__file__)
        code.append(str(file.parent if file.name == "__init__.py" else file))
    portable = portable_copy(model)
    mlflow.pytorch.save_model(
        portable,
        str(local),
        serialization_format="pickle",
        pip_requirements=[f"torch=={version('torch')}"],
        code_paths=code,
        metadata=metadata,
        signature=_signature(portable),
    )
    return local


def _signature(model):
    """Latents → images, from one decoder pass; None for a model whose latents or decoder say nothing of them."""
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    try:
        latent = int(model.config.latent_dim)
        with torch.no_grad():
            shape = tuple(model.decoder_mean(torch.zeros(1, latent)).shape[1:])
    except Exception:
        return None
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, latent))]),  # unnamed: predict takes the array itself
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
    )


def download_checkpoint(uri: str, run_id: str, name: str, folder: Path) -> Path:
    """The run's checkpoints/`name`.pt (schema.MODEL_FINAL / MODEL_BEST) downloaded into `folder`: the weights a
    cell's run keeps beside its logged models. Only the file is fetched; reading it is bench.run.checkpoints.read
    (weights-only). TrackingError when the run or the file does not exist."""
    client = _client(uri)
    try:
        client.get_run(run_id)
    except Exception as e:
        raise TrackingError(
            f"no run {run_id!r} in {uri} ({type(e).__name__}); copy a run id from the MLflow UI"
        ) from None
    artifact = f"{schema.CHECKPOINTS_DIR}/{name}.pt"
    if artifact not in {a.path for a in client.list_artifacts(run_id, schema.CHECKPOINTS_DIR)}:
        raise TrackingError(
            f"run {run_id} has no {artifact}: real-data and external runs have none, nor cells that did not finish "
            "(a best checkpoint needs train.eval_every); use a finished cell run of `bench run`"
        )
    with no_progress_bars():  # one file: the bar only adds noise
        return Path(client.download_artifacts(run_id, artifact, str(folder)))
