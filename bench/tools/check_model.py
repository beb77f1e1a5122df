"""`bench check-model NAME`: the model contract (baselines/contract.py) checked in seconds, on tiny random data and
the CPU, before a suite spends hours on a model that cannot finish. Each check is one line: ok, or FAIL and why."""

from __future__ import annotations

import copy
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

import baselines
from baselines.contract import class_problems


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"  {'ok  ' if self.ok else 'FAIL'}  {self.name}" + (f": {self.detail}" if self.detail else "")


class Failed(AssertionError):
    """A check's own finding (the message is the detail)."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def _scalar_logs(logs) -> str:
    _expect(isinstance(logs, dict), f"train_step must return a dict of scalar tensors, got {type(logs).__name__}")
    bad = [k for k, v in logs.items() if not (torch.is_tensor(v) and v.numel() == 1)]
    _expect(not bad, f"train_step returned non-scalar values for {bad}")
    nonfinite = {k: float(v) for k, v in logs.items() if not math.isfinite(float(v))}
    _expect(not nonfinite, f"non-finite losses {nonfinite}")
    return ", ".join(f"{k} {float(v):.3g}" for k, v in logs.items())


def check(name: str, image_shape: tuple[int, int, int] = (1, 28, 28), observation: str = "bernoulli") -> list[Check]:
    """Every check of model `name` for images of `image_shape`; stops early only when the model cannot be built."""
    checks: list[Check] = []

    def run(label: str, body: Callable[[], str]) -> bool:
        try:
            detail = body() or ""
            checks.append(Check(label, True, detail))
            return True
        except Failed as e:
            checks.append(Check(label, False, str(e)))
        except Exception as e:  # the model's own error: name it and where it was raised, in one line
            frame = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
            checks.append(Check(label, False, f"{type(e).__name__}: {e} (at {where})"))
        return False

    cls = baselines.get(name)
    problems = class_problems(cls)
    checks.append(Check("class: nn.Module, family, Config dataclass, methods", not problems, "; ".join(problems)))
    if problems:
        return checks
    state: dict = {}
    c, h, w = image_shape

    def construct() -> str:
        torch.manual_seed(0)
        model = baselines.build(name, None, image_shape, observation)
        _expect(
            isinstance(getattr(model, "batches_per_step", None), int) and model.batches_per_step >= 1,
            "batches_per_step must be an int >= 1",
        )
        _expect(isinstance(model.config, cls.Config), "model.config must be the Config instance it was built with")
        optimizers = model.optimizers()
        _expect(
            isinstance(optimizers, dict)
            and optimizers
            and all(isinstance(o, torch.optim.Optimizer) for o in optimizers.values()),
            "optimizers() must return a non-empty dict of torch.optim.Optimizer",
        )
        state.update(model=model, optimizers=optimizers)
        params = sum(p.numel() for p in model.parameters())
        return f"{cls.family}, {params:,} parameters, optimizers {', '.join(optimizers)}"

    if not run(f"build for {c}x{h}x{w} images", construct):
        return checks
    model, optimizers = state["model"], state["optimizers"]
    latent = model.config.latent_dim

    def sample() -> str:
        model.eval()
        a = model.sample(6, generator=torch.Generator().manual_seed(1))
        b = model.sample(6, generator=torch.Generator().manual_seed(1))
        _expect(torch.is_tensor(a) and a.dtype == torch.uint8, f"samples must be uint8, got {getattr(a, 'dtype', a)}")
        _expect(
            tuple(a.shape) == (6, *image_shape),
            f"samples must be (n, C, H, W) = {(6, *image_shape)}, got {tuple(a.shape)}",
        )
        _expect(torch.equal(a, b), "sample(n, generator) is not reproducible for one generator seed")
        return f"uint8 {tuple(a.shape)}, values {int(a.min())}..{int(a.max())}, reproducible"

    def decoder_mean() -> str:
        z = torch.randn(5, latent, requires_grad=True)
        x = model.decoder_mean(z)
        _expect(tuple(x.shape) == (5, *image_shape), f"decoder_mean must give (N, C, H, W), got {tuple(x.shape)}")
        _expect(bool(((x >= 0) & (x <= 1)).all()), "decoder_mean must lie in [0, 1]")
        x.sum().backward()
        _expect(z.grad is not None and torch.isfinite(z.grad).all(), "decoder_mean must be differentiable in z")
        return f"(N, {c}, {h}, {w}) in [0, 1], differentiable"

    def train_step() -> str:
        model.train()
        before = copy.deepcopy(model.state_dict())
        x = torch.rand(model.batches_per_step * 8, *image_shape, generator=torch.Generator().manual_seed(2))
        start = time.perf_counter()
        logs = model.train_step(x, optimizers)
        text = _scalar_logs(logs)
        changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        _expect(changed, "train_step left every parameter unchanged (no optimiser step?)")
        _expect(all(torch.isfinite(p).all() for p in model.parameters()), "parameters became non-finite")
        return f"{text} ({(time.perf_counter() - start) * 1000:.0f} ms on the CPU)"

    def logged() -> str:
        import io

        from bench.tracking import portable_copy

        model.eval()
        buffer = io.BytesIO()
        torch.save(portable_copy(model), buffer)  # pickled whole, as mlflow.pytorch stores a model
        size = buffer.tell()
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        again = loaded.sample(6, generator=torch.Generator().manual_seed(1))
        _expect(
            torch.equal(again, model.sample(6, generator=torch.Generator().manual_seed(1))),
            "the pickled copy samples differently from the model",
        )
        return f"pickles ({size / 1e6:.1f} MB) and samples the same after loading"

    run("sample(n, generator)", sample)
    run("decoder_mean(z)", decoder_mean)
    run("logged as an MLflow model", logged)
    run(f"one train_step on {model.batches_per_step} x 8 real images", train_step)
    if cls.family == "vae":
        model.eval()
        x = model.observe(
            torch.rand(8, *image_shape, generator=torch.Generator().manual_seed(3)),
            generator=torch.Generator().manual_seed(4),
        )

        def elbo_vs_iwae() -> str:
            with torch.no_grad():
                torch.manual_seed(5)
                log_px, kl = model.elbo_terms(x)
                _expect(tuple(log_px.shape) == tuple(kl.shape) == (8,), "elbo_terms must give two (B,) tensors")
                _expect(bool((kl >= -1e-5).all()), "KL(q || p) must be >= 0")
                elbo = (log_px - kl).mean().item()
                iwae = model.log_likelihood(x, 256).mean().item()
            _expect(math.isfinite(elbo) and math.isfinite(iwae), f"non-finite ELBO {elbo} or IWAE {iwae}")
            _expect(elbo <= iwae + 0.5, f"mean ELBO {elbo:.2f} > IWAE(k=256) {iwae:.2f}: the bounds are inverted")
            return f"ELBO {elbo:.1f} <= IWAE(k=256) {iwae:.1f} nats"

        def reconstruct() -> str:
            r = model.reconstruct(torch.rand(4, *image_shape))
            _expect(
                r.dtype == torch.uint8 and tuple(r.shape) == (4, *image_shape),
                f"reconstruct must give uint8 (B, C, H, W), got {r.dtype} {tuple(r.shape)}",
            )
            return "uint8"

        run("ELBO <= importance-weighted bound", elbo_vs_iwae)
        run("reconstruct(x)", reconstruct)
    return checks
