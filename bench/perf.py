"""`bench perf`: how fast genbench trains, evaluates and tracks, measured against a plain PyTorch loop.

For each baseline and image shape, the same model and batch size go through
- genbench's training loop (bench.train: the dataset resident on the device, batches drawn by index), and
- a reference loop written the way most PyTorch code is: a torchvision-style Dataset (uint8 array → PIL image →
  ToTensor, as torchvision's MNIST and CIFAR10 do) and a shuffling DataLoader,
side by side in this process, after a warm-up; the ratio is genbench's images/s over the reference's. Evaluation
throughput is images/s through the feature extractor; tracking overhead is the share of a training loop's wall time
spent inside MLflow calls. Everything is logged to the MLflow experiment `perf`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import VisionDataset
from torchvision.transforms import ToTensor

import baselines
from bench import tracking
from bench.config import TrainConfig
from bench.features import DomainNet
from bench.train import train

SHAPES = {"28": (1, 28, 28), "32": (3, 32, 32)}
WARMUP = 3


class ReferenceImages(VisionDataset):
    """What torchvision's MNIST/CIFAR10 datasets do per item: a PIL image from the uint8 array, then the transform."""

    def __init__(self, images: np.ndarray, transform=None):
        super().__init__(root="", transform=transform)
        self.images = images  # (N, H, W) or (N, H, W, C) uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i], mode="L" if self.images.ndim == 3 else "RGB")
        return self.transform(image), 0


@dataclass
class Row:
    model: str
    shape: str
    ours: float  # images/s
    reference: float
    eval_ips: float = float("nan")

    @property
    def ratio(self) -> float:
        return self.ours / self.reference


class _Quiet:
    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_samples(self, images, step) -> None:
        pass


def _data(shape: tuple[int, int, int], n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)


def _model(name: str, shape, device):
    torch.manual_seed(0)
    return baselines.build(name, None, shape).to(device)


def ours(name: str, shape, images: torch.Tensor, steps: int, batch_size: int, device) -> float:
    """genbench's loop: TrainResult.images_per_s over `steps` steps, after a warm-up run on the same model."""
    model = _model(name, shape, device)
    data = images.to(device)
    quiet = dict(batch_size=batch_size, log_every=10**9, sample_every=10**9, checkpoint_every=10**9, eval_every=0)
    train(model, data, TrainConfig(steps=WARMUP, **quiet), seed=0, logger=_Quiet(), progress=False)
    # every step reads its losses back (.item()), so the loop's own clock covers the device work
    return train(model, data, TrainConfig(steps=steps, **quiet), seed=1, logger=_Quiet(), progress=False).images_per_s


def reference(name: str, shape, images: torch.Tensor, steps: int, batch_size: int, device) -> float:
    """The plain loop: Dataset + DataLoader(shuffle), `.to(device)` per batch, the same train_step."""
    model = _model(name, shape, device)
    optimizers = model.optimizers()
    per_step = batch_size * getattr(model, "batches_per_step", 1)
    array = images.numpy()
    array = array[:, 0] if shape[0] == 1 else array.transpose(0, 2, 3, 1)
    loader = DataLoader(ReferenceImages(array, ToTensor()), batch_size=per_step, shuffle=True, drop_last=True)
    model.train()

    def run(n: int) -> float:
        done, start = 0, time.perf_counter()
        while done < n:
            for x, _ in loader:
                model.train_step(x.to(device, non_blocking=True), optimizers)
                done += 1
                if done == n:
                    break
        _sync(device)
        return time.perf_counter() - start

    run(WARMUP)
    return steps * per_step / run(steps)


def eval_throughput(shape, device, n: int = 2000, batch_size: int = 500) -> float:
    """Images/s through the domain extractor's network (untrained: the cost does not depend on the weights)."""
    from bench.features import Extractor

    net = DomainNet(shape, 10, 64).to(device).eval()
    extractor = Extractor("domain", "-", "-", net, {}, feature_dim=64)
    images = _data(shape, n, seed=1)
    extractor(images[:batch_size], batch_size)
    _sync(device)
    start = time.perf_counter()
    extractor(images, batch_size)
    _sync(device)
    return n / (time.perf_counter() - start)


def tracking_overhead(device, steps: int = 300) -> tuple[float, float]:
    """A gan-mlp training loop logging to a fresh sqlite store on the quick suite's schedule (metrics every 50 steps,
    a sample grid every 500, here every 100): seconds inside MLflow calls and the loop's wall time."""
    from bench.runner import _CellLogger

    with tempfile.TemporaryDirectory() as tmp:
        tracker = tracking.Tracker(tracking.default_uri(Path(tmp)), "perf-overhead", Path(tmp) / "artifacts")
        run = tracker.start_run("overhead", {})
        model = _model("gan-mlp", SHAPES["28"], device)
        cfg = TrainConfig(steps=steps, batch_size=64, log_every=50, sample_every=100, checkpoint_every=10**9,
                          eval_every=0)  # fmt: skip
        start = time.perf_counter()
        train(model, _data(SHAPES["28"], 2000).to(device), cfg, seed=0, logger=_CellLogger(run), progress=False)
        wall = time.perf_counter() - start
        run.end("FINISHED")
        return run.seconds, wall


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(
    models: list[str],
    shapes: list[str],
    steps: int,
    batch_size: int,
    device,
    echo: Callable[[str], None] = print,
    overhead_steps: int = 300,
    repeats: int = 1,
) -> tuple[list[Row], tuple[float, float]]:
    """Each loop timed `repeats` times, alternating genbench and reference so slow drifts of the machine hit both;
    the best of each is kept (the usual benchmark convention: noise only ever slows a run down)."""
    rows = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        images = _data(shape, 4096)
        eval_ips = eval_throughput(shape, device)
        for name in models:
            a = b = 0.0
            for _ in range(repeats):
                a = max(a, ours(name, shape, images, steps, batch_size, device))
                b = max(b, reference(name, shape, images, steps, batch_size, device))
            rows.append(Row(name, "x".join(map(str, shape)), a, b, eval_ips))
            echo(f"  {name:<9} {rows[-1].shape:<8} genbench {a:9.0f} img/s   reference {b:9.0f} img/s   "
                 f"ratio {a / b:5.2f}")  # fmt: skip
    return rows, tracking_overhead(device, overhead_steps)


def table(rows: list[Row], overhead: tuple[float, float], device) -> str:
    lines = [
        f"device: {device}; images/s after {WARMUP} warm-up steps, best of the repeats",
        "",
        "| model | shape | genbench train img/s | reference train img/s | ratio | eval img/s (domain extractor) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.shape} | {r.ours:,.0f} | {r.reference:,.0f} | {r.ratio:.2f} | {r.eval_ips:,.0f} |"
        )
    seconds, wall = overhead
    lines += ["", f"tracking overhead: {seconds:.2f} s in MLflow calls over {wall:.1f} s of training "
              f"({100 * seconds / wall:.2f}%)"]  # fmt: skip
    return "\n".join(lines)


def log(uri: str, rows: list[Row], overhead: tuple[float, float], params: dict, text: str) -> str:
    tracker = tracking.Tracker(uri, "perf", Path(tempfile.gettempdir()) / "genbench-perf-artifacts")
    run = tracker.start_run(f"perf-{time.strftime('%Y%m%d-%H%M%S')}", {"bench.perf": "true"})
    run.log_params(params)
    metrics = {}
    for r in rows:
        key = f"{r.model}/{r.shape}"
        metrics.update({f"train_ips/{key}": r.ours, f"reference_ips/{key}": r.reference, f"ratio/{key}": r.ratio})
        metrics[f"eval_ips/domain/{r.shape}"] = r.eval_ips
    metrics["tracking_overhead"] = overhead[0] / overhead[1]
    run.log_metrics(metrics)
    run.log_text(text + "\n", "perf.md")
    run.end("FINISHED")
    return run.run_id
