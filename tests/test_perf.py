"""`bench perf`: both loops run the same model on the same data; results printed and logged to experiment perf."""

from __future__ import annotations

import mlflow
import torch
from click.testing import CliRunner

from bench import perf, tracking
from bench.cli import main
from tests.conftest import REPO


def test_reference_dataset_yields_what_torchvision_datasets_yield():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    from torchvision.transforms import ToTensor

    ds = perf.ReferenceImages(images.numpy().transpose(0, 2, 3, 1), ToTensor())
    x, _ = ds[3]
    assert x.shape == (3, 32, 32) and torch.allclose(x, images[3].float() / 255)


def test_bench_perf_cli_prints_and_logs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    result = CliRunner().invoke(
        main, ["perf", "--models", "gan-mlp,vae-mlp", "--shapes", "28", "--steps", "2", "--overhead-steps", "60"]
    )
    assert result.exit_code == 0, result.output
    assert "| gan-mlp | 1x28x28 |" in result.output and "tracking overhead:" in result.output
    client = mlflow.MlflowClient(tracking.default_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("perf").experiment_id])
    metrics = run.data.metrics
    for key in ("train_ips/gan-mlp/1x28x28", "reference_ips/vae-mlp/1x28x28", "eval_ips/domain/1x28x28"):
        assert metrics[key] > 0, key
    assert (
        metrics["ratio/gan-mlp/1x28x28"]
        == metrics["train_ips/gan-mlp/1x28x28"] / metrics["reference_ips/gan-mlp/1x28x28"]
    )
    assert 0 < metrics["tracking_overhead"] < 1
    bad = CliRunner().invoke(main, ["perf", "--models", "nope", "--shapes", "28"])
    assert bad.exit_code == 2 and "unknown model(s) ['nope']" in bad.output
