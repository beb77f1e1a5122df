"""`bench perf`: both loops run the same model on the same data; results printed and logged to experiment perf."""

from __future__ import annotations

import mlflow
import pytest
import torch
from click.testing import CliRunner

from bench import tracking
from bench.cli import main
from bench.devices import native_bf16
from bench.tools import perf
from tests.conftest import REPO


def test_reference_dataset_yields_what_torchvision_datasets_yield():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    from torchvision.transforms import ToTensor

    ds = perf.ReferenceImages(images.numpy().transpose(0, 2, 3, 1), ToTensor())
    x, _ = ds[3]
    assert x.shape == (3, 32, 32) and torch.allclose(x, images[3].float() / 255)


@pytest.mark.integration  # bench perf trains and logs to a store
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


@pytest.mark.integration  # a suite, its cells in worker processes
def test_speed_options_reach_genbench_loop_and_are_logged(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    args = ["perf", "--models", "dcgan", "--shapes", "28", "--steps", "1", "--overhead-steps", "10"]
    result = CliRunner().invoke(main, [*args, "--precision", "bf16", "--channels-last"])
    assert result.exit_code == 0, result.output
    assert "genbench's loop: bf16 + channels_last; the reference loop: fp32, eager" in result.output
    assert "GPU util" not in result.output  # no GPU: no utilisation column
    assert ("PyTorch emulates it" in result.output) == (not native_bf16(torch.device("cpu")))  # this CPU's bf16
    client = mlflow.MlflowClient(tracking.default_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("perf").experiment_id])
    assert run.data.params["precision"] == "bf16" and run.data.params["channels_last"] == "True"
    assert run.data.params["compile"] == "False"


def test_ours_applies_the_speed_path(monkeypatch):
    seen = []
    real = perf.train

    def spy(model, data, cfg, **kw):
        seen.append((cfg.precision, cfg.channels_last))
        return real(model, data, cfg, **kw)

    monkeypatch.setattr(perf, "train", spy)
    ips, util = perf.time_genbench_loop("dcgan", perf.SHAPES["28"], perf._data(perf.SHAPES["28"], 256), 1, 8, "cpu",
                          {"precision": "bf16", "channels_last": True})  # fmt: skip
    assert ips > 0 and util != util  # nan off CUDA
    assert seen == [("bf16", True), ("bf16", True)]  # warm-up and timed run


def test_gpu_utilisation_sampler_averages_readings_and_needs_enough_of_them():
    import time

    readings = iter(range(1000))
    with perf.GpuUtilisation("cuda", interval=0.001, read=lambda: next(readings)) as util:
        time.sleep(0.1)
    n = len(util.samples)
    assert n >= 5 and util.samples == list(range(n)) and util.mean == (n - 1) / 2
    with perf.GpuUtilisation("cpu") as off:  # no reader off CUDA: nothing sampled
        time.sleep(0.01)
    assert off.read is None and off.samples == [] and off.mean != off.mean
    few = perf.GpuUtilisation("cuda", read=lambda: 50.0, min_samples=5)
    few.samples = [50.0] * 4
    assert few.mean != few.mean  # nan below min_samples


def test_nvidia_smi_output_and_table_with_gpu_column():
    assert perf.parse_smi("87\n") == 87.0 and perf.parse_smi(" 3\n12\n") == 3.0
    rows = [perf.Row("gan-mlp", "1x28x28", 300.0, 100.0, 50.0, 91.0, 40.0),
            perf.Row("sngan", "1x28x28", 30.0, 30.0, 50.0, float("nan"), 99.0)]  # fmt: skip
    text = perf.table(rows, (0.1, 10.0), "cuda", {"precision": "bf16", "compile": True})
    assert "genbench's loop: bf16 + compile;" in text
    assert "| gan-mlp | 1x28x28 | 300 | 100 | 3.00 | 50 | 91% / 40% |" in text
    assert "| sngan | 1x28x28 | 30 | 30 | 1.00 | 50 | n/a / 99% |" in text and "too short for NVML" in text


@pytest.mark.integration  # scripts/gpu-check in a subprocess
def test_gpu_check_script_runs_its_phases_and_writes_the_summary(tmp_path):
    """scripts/gpu-check is the one prepared command for a lent GPU machine: tried here on the CPU with --tiny, two
    cheap phases end to end (environment; encoder, Inception and AIS throughput)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "gc"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu-check"), "--device", "cpu", "--tiny", "--out", str(out),
         "--phases", "env,eval", "--wheels", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["gpu"] == "none (CPU)" and results["env"]["torch"] == torch.__version__
    for key in ("domain_images_per_s/28", "inception_images_per_s/32", "ais_gradient_evals_per_s/sngan"):
        assert results["eval"][key] > 0, key
    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout and "device: none (CPU)" in summary and "ais_gradient_evals_per_s/iwae" in summary
