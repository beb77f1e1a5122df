"""`bench perf`: how fast genbench trains, evaluates and tracks, measured against a plain PyTorch loop.

For each baseline and image shape, the same model and batch size go through
- genbench's training loop (bench.train: the dataset resident on the device, batches drawn by index), and
- a reference loop written the way most PyTorch code is: a torchvision-style Dataset (uint8 array → PIL image →
  ToTensor, as torchvision's MNIST and CIFAR10 do) and a shuffling DataLoader,
side by side in this process, after a warm-up; the ratio is genbench's images/s over the reference's. genbench's
loop can be given the speed path (`speed`: precision, channels_last, compile, tf32, as in [suites.NAME.train]); the
reference always runs plain fp32 eager, as a user's own loop would. On CUDA the GPU's utilisation (NVML's: the share
of time a kernel was running, what nvidia-smi shows) is sampled during both timed loops. Evaluation throughput is
images/s through the feature encoder; tracking overhead is the share of a training loop's wall time spent inside
MLflow calls. Everything is logged to the MLflow experiment `perf`.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import threading
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
from bench.eval.encoders import DomainNet
from bench.run.train import GraphStep, train

SHAPES = {"28": (1, 28, 28), "32": (3, 32, 32)}
WARMUP = 3
SPEED_KEYS = ("precision", "channels_last", "compile", "tf32", "cuda_graph")  # the TrainConfig fields of the speed path
DEFAULT_SPEED = {key: getattr(TrainConfig(), key) for key in SPEED_KEYS}


def check_speed(speed: dict, what: str) -> dict:
    """The speed fields as TrainConfig validates them (its rules, e.g. compile with cuda_graph, in one place);
    ValueError naming `what`."""
    try:
        TrainConfig(**speed)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return speed


def parse_variant(spec: str) -> dict:
    """'fp32', 'bf16+channels_last+cuda_graph', ... → the speed fields of TrainConfig (ValueError naming the
    unknown word)."""
    speed = dict(DEFAULT_SPEED)
    for word in filter(None, (w.strip() for w in spec.split("+"))):
        if word in ("fp32", "bf16"):
            speed["precision"] = word
        elif word in SPEED_KEYS[1:]:
            speed[word] = True
        else:
            raise ValueError(f"unknown word {word!r} in variant {spec!r}; use fp32 or bf16 and any of "
                             f"{', '.join(SPEED_KEYS[1:])}, joined by '+'")  # fmt: skip
    return check_speed(speed, f"variant {spec!r}")


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
    genbench_ips: float  # images/s
    reference: float
    eval_ips: float = float("nan")
    genbench_util: float = float("nan")  # mean GPU utilisation (%) during the timed loops; nan off CUDA
    reference_util: float = float("nan")
    variant: str = "fp32"  # genbench's loop: speed_label of its speed options

    @property
    def ratio(self) -> float:
        return self.genbench_ips / self.reference


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


class GpuUtilisation:
    """Mean GPU utilisation in % while the `with` block runs, sampled every `interval` s on a background thread.

    `read` returns one reading (0-100). By default on CUDA: NVML through torch.cuda.utilization (needs the
    nvidia-ml-py package), else nvidia-smi; off CUDA, or when neither answers, there is no reader and `mean` is nan.
    NVML's own sampling period is 1/6 s to 1 s, so loops shorter than a few seconds give no reliable figure:
    `mean` is nan below `min_samples` readings.
    """

    def __init__(self, device, interval: float = 0.05, read: Callable[[], float] | None = None, min_samples: int = 5):
        self.read = read if read is not None else gpu_reader(device)
        self.interval, self.min_samples = interval, min_samples
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(float(self.read()))

    def __enter__(self) -> GpuUtilisation:
        if self.read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if len(self.samples) >= self.min_samples else float("nan")


def gpu_reader(device) -> Callable[[], float] | None:
    """A function returning the device's current utilisation in %, or None (not CUDA; no NVML and no nvidia-smi)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        torch.cuda.utilization(index)
        return lambda: torch.cuda.utilization(index)
    except Exception:  # pynvml (nvidia-ml-py) missing or NVML unusable: ask nvidia-smi
        pass

    def smi() -> float:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"--id={index}"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        return parse_smi(out)

    try:
        smi()
        return smi
    except Exception:
        return None


def parse_smi(out: str) -> float:
    """nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits prints e.g. '87\n'."""
    return float(out.strip().splitlines()[0])


def time_genbench_loop(
    name: str, shape, images: torch.Tensor, steps: int, batch_size: int, device, speed: dict | None = None
) -> tuple[float, float]:
    """genbench's loop: TrainResult.images_per_s over `steps` steps, after a warm-up run on the same model (which also
    compiles, with speed compile=True); and the mean GPU utilisation during the timed run. train() waits for the
    device before it reads its clock, so the time covers the device's work. With cuda_graph, the rate after the
    graph's own warm-up and capture (TrainResult.steady_images_per_s), over `steps` replayed steps."""
    model = _model(name, shape, device)
    data = images.to(device)
    quiet = dict(batch_size=batch_size, log_every=10**9, sample_every=10**9, checkpoint_every=10**9, eval_every=0)
    quiet.update(speed or {})
    graph = bool(quiet.get("cuda_graph")) and torch.device(device).type == "cuda"
    if not graph:
        train(model, data, TrainConfig(steps=WARMUP, **quiet), seed=0, logger=_Quiet(), progress=False)
    n = steps + (GraphStep.WARMUP + 1 if graph else 0)
    with GpuUtilisation(device) as util:
        result = train(model, data, TrainConfig(steps=n, **quiet), seed=1, logger=_Quiet(), progress=False)
    ips = result.steady_images_per_s if graph and result.steady_images_per_s else result.images_per_s
    return ips, util.mean


def time_reference_loop(
    name: str, shape, images: torch.Tensor, steps: int, batch_size: int, device
) -> tuple[float, float]:
    """The plain loop: Dataset + DataLoader(shuffle), `.to(device)` per batch, the same train_step."""
    model = _model(name, shape, device)
    optimizers = model.optimizers()
    per_step = batch_size * model.batches_per_step
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
    with GpuUtilisation(device) as util:
        seconds = run(steps)
    return steps * per_step / seconds, util.mean


def eval_throughput(shape, device, n: int = 2000, batch_size: int = 500) -> float:
    """Images/s through the domain encoder's network (untrained: the cost does not depend on the weights)."""
    from bench.eval.encoders import Encoder

    net = DomainNet(shape, 10, 64).to(device).eval()
    encoder = Encoder("domain", "-", "-", net, {}, feature_dim=64)
    images = _data(shape, n, seed=1)
    encoder(images[:batch_size], batch_size)
    _sync(device)
    start = time.perf_counter()
    encoder(images, batch_size)
    _sync(device)
    return n / (time.perf_counter() - start)


def tracking_overhead(device, steps: int = 300) -> tuple[float, float]:
    """A gan-mlp training loop logging to a fresh sqlite store on the quick suite's schedule (metrics every 50 steps,
    a sample grid every 500, here every 100): seconds inside MLflow calls and the loop's wall time."""
    from bench.run.cell import CellLogger

    with tempfile.TemporaryDirectory() as tmp:
        tracker = tracking.Tracker(tracking.default_uri(Path(tmp)), "perf-overhead", Path(tmp) / "artifacts")
        run = tracker.start_run("overhead", {})
        model = _model("gan-mlp", SHAPES["28"], device)
        cfg = TrainConfig(steps=steps, batch_size=64, log_every=50, sample_every=100, checkpoint_every=10**9,
                          eval_every=0)  # fmt: skip
        start = time.perf_counter()
        train(model, _data(SHAPES["28"], 2000).to(device), cfg, seed=0, logger=CellLogger(run), progress=False)
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
    speed: dict | list[dict] | None = None,
) -> tuple[list[Row], tuple[float, float]]:
    """Each loop timed `repeats` times, alternating genbench and reference so slow drifts of the machine hit both;
    the best of each is kept (the usual benchmark convention: noise only ever slows a run down), with the GPU
    utilisation of that best run. `speed` may list several speed variants of genbench's loop: each is a row,
    against the one reference loop of its model and shape."""
    speeds = speed if isinstance(speed, list) else [speed or {}]
    rows = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        images = _data(shape, 4096)
        eval_ips = eval_throughput(shape, device)
        for name in models:
            best = [(0.0, float("nan"))] * len(speeds)
            b = (0.0, float("nan"))
            for _ in range(repeats):
                for i, sp in enumerate(speeds):
                    best[i] = max(
                        best[i],
                        time_genbench_loop(name, shape, images, steps, batch_size, device, sp),
                        key=lambda r: r[0],
                    )
                b = max(b, time_reference_loop(name, shape, images, steps, batch_size, device), key=lambda r: r[0])
            for sp, a in zip(speeds, best, strict=True):
                rows.append(Row(name, "x".join(map(str, shape)), a[0], b[0], eval_ips, a[1], b[1], speed_label(sp)))
                util = "" if math.isnan(a[1]) and math.isnan(b[1]) else f"   GPU util {a[1]:3.0f}% / {b[1]:3.0f}%"
                label = f" [{rows[-1].variant}]" if len(speeds) > 1 else ""
                echo(f"  {name:<9} {rows[-1].shape:<8} genbench {a[0]:9.0f} img/s   reference {b[0]:9.0f} img/s   "
                     f"ratio {a[0] / b[0]:5.2f}{util}{label}")  # fmt: skip
    return rows, tracking_overhead(device, overhead_steps)


def speed_label(speed: dict | None) -> str:
    """'fp32' for the defaults, else e.g. 'bf16 + channels_last + compile'."""
    speed = {**DEFAULT_SPEED, **(speed or {})}
    return " + ".join([speed["precision"]] + [k for k in SPEED_KEYS[1:] if speed[k]])


def table(rows: list[Row], overhead: tuple[float, float], device, speed: dict | list[dict] | None = None) -> str:
    gpu = any(not (math.isnan(r.genbench_util) and math.isnan(r.reference_util)) for r in rows)
    speeds = speed if isinstance(speed, list) else [speed]
    several = len(speeds) > 1
    lines = [
        f"device: {device}; images/s after {WARMUP} warm-up steps, best of the repeats",
        f"genbench's loop: {', '.join(speed_label(s) for s in speeds)}; the reference loop: fp32, eager, "
        "Dataset + DataLoader",
        "",
        "| model | shape |"
        + (" genbench loop |" if several else "")
        + " genbench train img/s | reference train img/s | ratio | eval img/s (domain encoder) |"
        + (" GPU util genbench / reference |" if gpu else ""),
        "|---|---|" + ("---|" if several else "") + "---:|---:|---:|---:|" + ("---:|" if gpu else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.shape} |"
            + (f" {r.variant} |" if several else "")
            + f" {r.genbench_ips:,.0f} | {r.reference:,.0f} | {r.ratio:.2f} | {r.eval_ips:,.0f} |"
            + (f" {_pct(r.genbench_util)} / {_pct(r.reference_util)} |" if gpu else "")
        )
    seconds, wall = overhead
    lines += ["", f"tracking overhead: {seconds:.2f} s in MLflow calls over {wall:.1f} s of training "
              f"({100 * seconds / wall:.2f}%)"]  # fmt: skip
    if gpu and any(math.isnan(r.genbench_util) or math.isnan(r.reference_util) for r in rows):
        lines.append("n/a GPU util: the timed loop was too short for NVML's sampling; time more steps (--steps)")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.0f}%"


def log(
    uri: str, rows: list[Row], overhead: tuple[float, float], params: dict, text: str, results: Path = Path("results")
) -> str:
    tracker = tracking.Tracker(uri, "perf", Path(results) / "artifacts")  # beside the suites' artifacts
    run = tracker.start_run(f"perf-{time.strftime('%Y%m%d-%H%M%S')}", {"bench.perf": "true"})
    run.log_params(params)
    metrics = {}
    several = len({r.variant for r in rows}) > 1
    for r in rows:
        key = f"{r.model}/{r.shape}" + (f"/{r.variant.replace(' + ', '-')}" if several else "")
        metrics.update(
            {f"train_ips/{key}": r.genbench_ips, f"reference_ips/{key}": r.reference, f"ratio/{key}": r.ratio}
        )
        for prefix, util in (("gpu_util", r.genbench_util), ("reference_gpu_util", r.reference_util)):
            if not math.isnan(util):
                metrics[f"{prefix}/{key}"] = util
        metrics[f"eval_ips/domain/{r.shape}"] = r.eval_ips
    metrics["tracking_overhead"] = overhead[0] / overhead[1]
    run.log_metrics(metrics)
    run.log_text(text + "\n", "perf.md")
    run.end("FINISHED")
    return run.run_id
