"""The training loop: reproducible, resumable, and loud about divergence."""

from __future__ import annotations

import pytest
import torch

import baselines
from bench.config import TrainConfig
from bench.devices import bf16_note, native_bf16
from bench.run.train import DivergenceError, train


class Recorder:
    def __init__(self):
        self.metrics, self.samples = [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, metrics))

    def log_samples(self, images, step):
        self.samples.append((step, images))


IMAGES = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def fresh(name="gan-mlp"):
    torch.manual_seed(0)
    cls = baselines.MODELS[name]
    return cls(cls.Config(), (1, 28, 28))


def params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


# sngan: a few seconds per step on a CPU, so only in `make test`
EVERY_MODEL = [pytest.param(n, marks=pytest.mark.slow) if n == "sngan" else n for n in baselines.MODELS]


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_same_seed_same_model(name):
    a, b = fresh(name), fresh(name)
    cfg = TrainConfig(steps=4, batch_size=8, log_every=2, sample_every=2, checkpoint_every=2)
    train(a, IMAGES, cfg, seed=3, logger=Recorder(), progress=False)
    train(b, IMAGES, cfg, seed=3, logger=Recorder(), progress=False)
    assert torch.equal(params(a), params(b))


def test_logs_samples_and_checkpoints_on_schedule(tmp_path):
    rec = Recorder()
    cfg = TrainConfig(steps=5, batch_size=8, log_every=2, sample_every=3, checkpoint_every=2)
    result = train(fresh(), IMAGES, cfg, seed=0, logger=rec, checkpoint=tmp_path / "last.pt", progress=False)
    assert [s for s, _ in rec.metrics] == [2, 4, 5] and [s for s, _ in rec.samples] == [3, 5]
    assert set(rec.metrics[0][1]) == {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"}
    assert rec.samples[0][1].shape == (64, 1, 28, 28) and rec.samples[0][1].dtype == torch.uint8
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 5 and set(state) == {
        "model",
        "optimizers",
        "config",
        "step",
        "rng",
        "train_seconds",
        "run_id",
    }
    assert result.steps == 5 and result.images_per_s > 0


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_resume_from_checkpoint_equals_uninterrupted_training(tmp_path, name):
    cfg = TrainConfig(steps=8, batch_size=8, log_every=2, sample_every=4, checkpoint_every=2)
    straight = fresh(name)
    train(straight, IMAGES, cfg, seed=1, logger=Recorder(), progress=False)

    ckpt = tmp_path / "last.pt"
    first = fresh(name)
    train(
        first,
        IMAGES,
        TrainConfig(steps=5, batch_size=8, log_every=2, sample_every=4, checkpoint_every=5),
        seed=1,
        logger=Recorder(),
        checkpoint=ckpt,
        progress=False,
    )
    torch.manual_seed(123)  # the resumed process starts with other RNG state
    resumed = fresh(name)
    result = train(resumed, IMAGES, cfg, seed=1, logger=Recorder(), checkpoint=ckpt, progress=False)
    assert result.resumed_from == 5
    assert torch.equal(params(resumed), params(straight))


def test_divergence_raises():
    class Diverging(torch.nn.Module):
        batches_per_step = 1  # the model contract (baselines/contract.py)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def optimizers(self):
            return {}

        def train_step(self, x, optimizers):
            return {"loss": float("nan")}

        def sample(self, n, generator=None):
            return torch.zeros(n, 1, 28, 28, dtype=torch.uint8)

    with pytest.raises(DivergenceError, match="training diverged at step 1"):
        train(Diverging(), IMAGES, TrainConfig(steps=3, batch_size=4), seed=0, logger=Recorder(), progress=False)


def test_a_step_hands_n_critic_real_batches_to_models_that_ask():
    class Critic5(torch.nn.Module):
        batches_per_step = 5  # as wgan-gp (n_critic) and sngan (n_dis)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def optimizers(self):
            return {}

        def train_step(self, x, optimizers):
            self.seen.append(tuple(x.shape))
            return {"loss": 0.0}

        def sample(self, n, generator=None):
            return torch.zeros(n, 1, 28, 28, dtype=torch.uint8)

    model = Critic5()
    result = train(model, IMAGES, TrainConfig(steps=3, batch_size=4), seed=0, logger=Recorder(), progress=False)
    assert model.seen == [(20, 1, 28, 28)] * 3  # 5 batches of 4 per generator step
    assert result.images_per_s == pytest.approx(3 * 20 / result.seconds)


@pytest.mark.parametrize("name", ["dcgan", "conv-vae"])  # batch norm (mode switching) and a VAE's sampling noise
def test_periodic_evaluation_leaves_training_unchanged(tmp_path, name):
    """The evaluator samples from the model between steps; the trained weights must be bit-identical without it."""
    from bench.eval.encoders import Encoder
    from bench.eval.pipeline import PeriodicFID

    class Flat(torch.nn.Module):  # a stand-in encoder: 16 fixed random projections of the pixels
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(28 * 28, 16, generator=torch.Generator().manual_seed(1)))

        def forward(self, x):
            f = (x.flatten(1).float() / 255.0) @ self.w
            return {"features": f, "logits": f[:, :4]}

    encoder = Encoder("flat", "-", "-", Flat(), {}, feature_dim=16)
    reference = encoder(IMAGES)
    cfg = TrainConfig(steps=6, batch_size=8, log_every=2, sample_every=6, checkpoint_every=6, eval_every=2)
    plain, watched = fresh(name), fresh(name)
    train(plain, IMAGES, cfg, seed=1, logger=Recorder(), progress=False)
    rec = Recorder()
    evaluator = PeriodicFID(encoder, reference, 40, 16, 0, tmp_path / "best.pt")
    train(watched, IMAGES, cfg, seed=1, logger=rec, progress=False, evaluator=evaluator)
    assert torch.equal(params(plain), params(watched)) and watched.training
    periodic = [(step, m) for step, m in rec.metrics if "periodic/fid" in m]
    assert [step for step, _ in periodic] == [2, 4, 6]
    fids = [m["periodic/fid"] for _, m in periodic]
    assert all(f > 0 for f in fids) and periodic[-1][1]["periodic/best_fid"] == min(fids)
    seconds = [m["periodic/train_s"] for _, m in periodic]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["fid"] == min(fids) and best["step"] == [2, 4, 6][fids.index(min(fids))]
    # a resumed run's evaluator starts from the saved best, so a worse later checkpoint never replaces it
    assert PeriodicFID(encoder, reference, 40, 16, 0, tmp_path / "best.pt").best_fid == min(fids)


def _losses(name, **kw):
    torch.manual_seed(0)
    model = fresh(name)
    cfg = TrainConfig(steps=3, batch_size=16, log_every=1, sample_every=100, checkpoint_every=100, eval_every=0, **kw)
    rec = Recorder()
    train(model, IMAGES, cfg, seed=0, logger=rec, progress=False)
    return model, rec.metrics[-1][1]


def test_speed_options_bf16_channels_last_and_tf32_flags():
    _, fp32 = _losses("dcgan")
    model, bf16 = _losses("dcgan", precision="bf16")
    assert all(torch.isfinite(torch.tensor(v)) for v in bf16.values()) and bf16 != fp32  # autocast was on
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights and optimiser stay fp32
    model, nhwc = _losses("dcgan", channels_last=True)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc == pytest.approx(fp32, rel=1e-4)  # the same math in another memory layout
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    _losses("gan-mlp", tf32=True)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before  # restored


@pytest.mark.parametrize("avx512_bf16, amx", [(False, False), (True, False), (False, True)])
def test_bf16_note_only_where_the_cpu_emulates_bf16(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) == (avx512_bf16 or amx)
    note = bf16_note(cpu)
    if avx512_bf16 or amx:
        assert note is None
    else:
        assert "PyTorch emulates it" in note and torch.backends.cpu.get_cpu_capability() in note


def test_compile_matches_eager():
    # vae-mlp: its noise is drawn outside the compiled networks (compiled dropout draws other masks than eager)
    _, eager = _losses("vae-mlp")
    model, compiled = _losses("vae-mlp", compile=True)
    assert any(getattr(m, "_compiled_call_impl", None) is not None for m in model.children())
    assert compiled == pytest.approx(eager, rel=1e-4)


class _LateNaN(torch.nn.Module):
    """A model whose loss turns NaN at step `at` (a tensor on the device, as the baselines return)."""

    batches_per_step = 1

    def __init__(self, at: int):
        super().__init__()
        self.w, self.at, self.calls = torch.nn.Parameter(torch.zeros(1)), at, 0

    def optimizers(self):
        return {}

    def train_step(self, x, optimizers):
        self.calls += 1
        return {"loss": torch.tensor(float("nan") if self.calls >= self.at else 1.0), "other": torch.tensor(2.0)}

    def sample(self, n, generator=None):
        return torch.zeros(n, 1, 28, 28, dtype=torch.uint8)


def test_divergence_between_log_steps_names_its_step_and_is_never_checkpointed(tmp_path):
    """Losses are read back once per log interval, not per step: a NaN at step 7 is still reported as step 7, and no
    checkpoint is written after it (the check runs before every checkpoint)."""
    ck = tmp_path / "last.pt"
    cfg = TrainConfig(steps=20, batch_size=4, log_every=10, sample_every=100, checkpoint_every=5)
    with pytest.raises(DivergenceError, match=r"training diverged at step 7: non-finite loss \{'loss': nan"):
        train(_LateNaN(at=7), IMAGES, cfg, seed=0, logger=Recorder(), progress=False, checkpoint=ck)
    assert torch.load(ck, weights_only=True)["step"] == 5  # the last checkpoint before the divergence


def test_loss_log_means_over_the_interval():
    from bench.run.train import LossLog

    log = LossLog()
    for v in (1.0, 2.0, 6.0):
        log.append({"a": torch.tensor(v), "b": v * 10})  # tensors and plain floats (a plugin's) alike
    assert log.flush() == {"a": pytest.approx(3.0), "b": pytest.approx(30.0)}
    assert log.flush() == {}


def test_cuda_graph_is_ignored_on_the_cpu_and_refused_with_compile():
    a, b = fresh("dcgan"), fresh("dcgan")
    base = dict(steps=4, batch_size=8, log_every=2)
    train(a, IMAGES, TrainConfig(**base), seed=0, logger=Recorder(), progress=False)
    train(b, IMAGES, TrainConfig(**base, cuda_graph=True), seed=0, logger=Recorder(), progress=False)
    assert torch.equal(params(a), params(b))
    with pytest.raises(ValueError, match="cuda_graph and train.compile cannot be combined"):
        TrainConfig(cuda_graph=True, compile=True)


def test_a_cuda_graph_checkpoint_resumes_without_one(tmp_path):
    """A CUDA-graph run saves Adam with capturable=True and its step counts on the GPU; resumed on a CPU (or with
    cuda_graph off) the optimiser must be turned back, or Adam refuses to step."""
    ck = tmp_path / "last.pt"
    model = fresh("dcgan")
    cfg = TrainConfig(steps=2, batch_size=8, log_every=1, checkpoint_every=1)
    train(model, IMAGES, cfg, seed=0, logger=Recorder(), progress=False, checkpoint=ck)
    state = torch.load(ck, weights_only=True)
    for opt in state["optimizers"].values():  # as a CUDA-graph run writes it (the step counts as float tensors)
        for group in opt["param_groups"]:
            group["capturable"] = True
    torch.save(state, ck)
    result = train(fresh("dcgan"), IMAGES, TrainConfig(steps=4, batch_size=8, log_every=1, checkpoint_every=1),
                   seed=0, logger=Recorder(), progress=False, checkpoint=ck)  # fmt: skip
    assert result.resumed_from == 2 and result.steps == 4
