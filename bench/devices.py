"""Devices and numerics in one place: which device a suite runs on, whether bf16 runs in hardware there, the
strict-fp32 context of evaluation, the training step's precision/TF32 context, and the environment record
(`environment.json`) of every run."""

from __future__ import annotations

import platform
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import torch

from bench.config import ConfigError
from bench.storage import source_commit


def resolve_device(name: str, what: str = "device") -> torch.device:
    """The device a name means ("auto": CUDA when present, else the CPU); a ConfigError for a device that is not
    there or a name that is none (`what`: the setting's name in the message)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{what} = {name!r}: not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what} = {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{what} = {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what} = {name!r} but MPS is not available here; use 'auto' or 'cpu'")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs in hardware on `device`: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX.
    Elsewhere (an AVX2-only CPU, say) PyTorch emulates bf16, which trains several times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def bf16_note(device: torch.device) -> str | None:
    """A note for a user who asked for bf16 where it is emulated; None where bf16 runs in hardware."""
    if native_bf16(device):
        return None
    found = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device.type
    return (
        f"note: train.precision = bf16, but this {device.type.upper()} ({found}) has no bf16 arithmetic "
        "(AVX512-BF16 or AMX on a CPU): PyTorch emulates it, and training runs several times slower than fp32"
    )


@contextmanager
def strict_fp32():
    """TF32 off for matmuls and convolutions (the evaluation features and AIS); the previous switches come back."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@contextmanager
def training_precision(cfg, device: torch.device, cache: bool = True):
    """bf16 autocast when asked, and the TF32 switches as the config says (restored after the step)."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    try:
        if cfg.precision == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _cpu_name() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems, so /proc/cpuinfo first)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(device) -> dict:
    """Versions, device and git commit: the `environment.json` artifact."""
    device = torch.device(device)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "torch-fidelity": version("torch-fidelity"),
        "mlflow": version("mlflow"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels PyTorch picked: AVX2, AVX512, ...
        "bf16_native": native_bf16(device),
        "git_commit": source_commit(),
    }
