"""Issue 17: the model contract, `bench check-model`, plugins (the README's example, installed with pip as a user
would), models loadable from MLflow, `bench sample` and `bench eval` of samples made elsewhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import baselines
from baselines.contract import GenerativeModel, LikelihoodModel, class_problems
from bench.cli import main
from tests.conftest import BENCH_TOML, REPO, TINY, WORKER_THREADS, child_runs, search, seed_cache, tiny_config

BENCH = str(Path(sys.executable).with_name("bench"))


@pytest.mark.parametrize("name", list(baselines.MODELS))
def test_every_baseline_keeps_the_contract(name):
    cls = baselines.MODELS[name]
    assert class_problems(cls) == []
    model = baselines.build(name, None, (1, 28, 28))
    assert isinstance(model, LikelihoodModel if cls.family == "vae" else GenerativeModel)
    assert isinstance(model.batches_per_step, int) and model.batches_per_step >= 1


def test_the_contract_check_finds_what_a_class_lacks():
    class NotAModel:
        family = "flow"

    problems = class_problems(NotAModel)
    assert any("not a torch.nn.Module" in p for p in problems) and any("'gan' or 'vae'" in p for p in problems)
    assert any("Config" in p for p in problems) and any("train_step" in p for p in problems)


@pytest.mark.parametrize("name", list(baselines.MODELS))
def test_check_model_passes_every_baseline(name):
    result = CliRunner().invoke(main, ["check-model", name])
    assert result.exit_code == 0, result.output
    assert f"{name}: all" in result.output and "FAIL" not in result.output


BROKEN = '''
from dataclasses import dataclass
import torch, torch.nn as nn


@dataclass(frozen=True)
class Config:
    latent_dim: int = 4


class FloatSamples(nn.Module):
    """A GAN whose samples are floats, not uint8, and whose train step learns nothing."""
    family = "gan"
    Config = Config
    batches_per_step = 1

    def __init__(self, config, image_shape):
        super().__init__()
        self.config, self.image_shape = config, image_shape
        self.net = nn.Linear(4, 28 * 28)

    def optimizers(self):
        return {"g": torch.optim.SGD(self.net.parameters(), lr=0.1)}

    def decoder_mean(self, z):
        return torch.sigmoid(self.net(z)).view(-1, *self.image_shape)

    def train_step(self, x, optimizers):
        return {"loss": torch.tensor(float("nan"))}

    def sample(self, n, generator=None):
        return self.decoder_mean(torch.randn(n, 4, generator=generator))


class Unpicklable(FloatSamples):
    """Keeps a lambda: it trains and samples, but cannot be pickled, so the end of its cell could not log it."""

    def __init__(self, config, image_shape):
        super().__init__(config, image_shape)
        self.scale = lambda x: x


class NoSample(nn.Module):
    family = "gan"
    Config = Config
'''


def _config_with_plugins(tmp_path: Path, plugins: dict[str, str]) -> Path:
    table = "\n".join(f'{k} = "{v}"' for k, v in plugins.items())
    path = tmp_path / "bench.toml"
    path.write_text(BENCH_TOML.read_text() + f"\n[plugins]\n{table}\n")
    return path


def test_check_model_names_each_broken_part_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "broken_models.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = _config_with_plugins(tmp_path, {"float-gan": "broken_models:FloatSamples"})
    result = CliRunner().invoke(main, ["check-model", "float-gan", "--config", str(config)])
    assert result.exit_code == 1
    fails = [line for line in result.output.splitlines() if "FAIL" in line]
    assert any("sample(n, generator): samples must be uint8" in line for line in fails), result.output
    assert any("train_step" in line and "non-finite losses" in line for line in fails), result.output
    assert "ok    decoder_mean" in result.output and "ok    logged as an MLflow model" in result.output
    config = _config_with_plugins(tmp_path, {"lambda-gan": "broken_models:Unpicklable"})
    result = CliRunner().invoke(main, ["check-model", "lambda-gan", "--config", str(config)])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if "logged as an MLflow model" in line]
    assert "FAIL" in line and "pickle" in line.lower(), result.output
    # a class that breaks the contract is refused when the config is read: exit 2, one line, before anything runs
    config = _config_with_plugins(tmp_path, {"no-sample": "broken_models:NoSample"})
    result = CliRunner().invoke(main, ["list", "--config", str(config)])
    assert result.exit_code == 2
    assert "breaks the model contract" in result.output and "method `sample` is missing" in result.output
    config = _config_with_plugins(tmp_path, {"gone": "not_a_module_anywhere:X"})
    result = CliRunner().invoke(main, ["list", "--config", str(config)])
    assert result.exit_code == 2 and "cannot import 'not_a_module_anywhere'" in result.output
    config = _config_with_plugins(tmp_path, {"dcgan": "broken_models:FloatSamples"})
    result = CliRunner().invoke(main, ["list", "--config", str(config)])
    assert result.exit_code == 2 and "has the name of a baseline" in result.output


def _readme_files() -> dict[str, str]:
    """The example files of docs/own-model.md ("Benchmark your own model"): fenced blocks whose first line names the
    file."""
    section = (REPO / "docs" / "own-model.md").read_text()
    blocks = re.findall(r"```(?:python|toml)\n# (my_models/\S+)\n(.*?)```", section, flags=re.S)
    return {name: body for name, body in blocks}


def test_the_readme_plugin_joins_the_quick_suite_without_editing_genbench(domain_cache, tmp_path):
    """docs/own-model.md, followed as written: its two files in a folder of their own, installed with pip (into a
    target folder, to leave the test environment as it was, and without build isolation: no network here),
    then `bench list`, `check-model`, a tiny quick suite with gan-mlp beside it and `bench report`; finally its
    logged model loads in a fresh process that cannot import the plugin's module."""
    files = _readme_files()
    assert set(files) == {"my_models/tiny_gan.py", "my_models/pyproject.toml"}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(tmp_path / "my_models")], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "BENCH_RESULTS": str(tmp_path / "results"), **WORKER_THREADS}
    seed_cache(domain_cache, tmp_path / "results")  # the session's domain encoder: not what is under test

    def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [BENCH, *args]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    listed = bench("list", "--config", str(BENCH_TOML))
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"tiny-gan\s+gan", listed.stdout) and "plugin: tiny_gan:TinyGAN" in listed.stdout
    checked = bench("check-model", "tiny-gan", "--config", str(BENCH_TOML))
    assert checked.returncode == 0 and "tiny-gan: all 6 checks passed" in checked.stdout, checked.stdout
    overrides = [x for o in (*TINY, "models=['gan-mlp','tiny-gan']", "seeds=[0]") for x in ("--set", o)]
    ran = bench("run", "--suite", "quick", "--config", str(BENCH_TOML), "--no-progress", *overrides)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    reported = bench("report", "--suite", "quick", "--config", str(BENCH_TOML))
    assert reported.returncode == 0, reported.stderr
    board = (tmp_path / "results" / "reports" / "quick" / "leaderboard.md").read_text()
    # one seed each: shown, not ranked (nothing can be tested at n = 1)
    assert re.search(r"\| — \|  \| tiny-gan \| 1 \|", board) and re.search(r"\| — \|  \| gan-mlp \| 1 \|", board)

    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    runs = child_runs(uri)
    tiny = runs[runs["tags.bench.model"] == "tiny-gan"].iloc[0]
    assert tiny["status"] == "FINISHED" and tiny["params.model.hidden"] == "256"
    load = textwrap.dedent(
        f"""
        import importlib.util, mlflow, mlflow.pytorch, torch
        assert importlib.util.find_spec("tiny_gan") is None  # not importable here: the model brings its code
        mlflow.set_tracking_uri("{uri}")
        model = mlflow.pytorch.load_model("models:/{tiny["tags.bench.model_id.final"]}", map_location="cpu")
        x = model.sample(5, generator=torch.Generator().manual_seed(0))
        print(type(model).__name__, tuple(x.shape), x.dtype)
        """
    )
    env_without = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, env=env_without, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TinyGAN", "(5,", "1,", "28,", "28)", "torch.uint8"]


def test_a_logged_model_loads_in_a_fresh_process_and_samples(quick_run, tmp_path):
    """The final and best models are MLflow 3 LoggedModels of the cell's run: listed by search_logged_models with
    their source run, step and linked metrics; loaded in a fresh process by models:/<id> (and runs:/<run>/final);
    their pyfunc flavour's predict turns latents into images in [0, 1], as the model's decoder does."""
    run = child_runs(quick_run["uri"]).query("`tags.bench.model` == 'vae-mlp'").iloc[0]
    client = mlflow.MlflowClient(quick_run["uri"])
    experiment = client.get_experiment_by_name("quick").experiment_id
    logged = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run['run_id']}'")
    seed = run["tags.bench.seed"]
    assert sorted(m.name for m in logged) == [f"vae-mlp-digits-seed{seed}-best", f"vae-mlp-digits-seed{seed}-final"]
    assert {m.tags["bench.checkpoint"] for m in logged} == {"best", "final"}
    final = next(m for m in logged if m.name.endswith("-final"))
    assert final.model_id == run["tags.bench.model_id.final"] and final.model_type == "genbench"
    linked = {m.key: m.value for m in final.metrics}
    assert linked["fid"] == run["metrics.fid"] and linked["nll_iwae"] == run["metrics.nll_iwae"]
    best = next(m for m in logged if m.name.endswith("-best"))
    assert {m.key: m.value for m in best.metrics}["best/fid"] == run["metrics.best/fid"]
    outputs = client.get_run(run["run_id"]).outputs.model_outputs
    assert {o.model_id for o in outputs} == {final.model_id, best.model_id}
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["bench"] = None  # genbench itself is not needed to load its models: torch and their code
        import mlflow, mlflow.pyfunc, mlflow.pytorch, numpy as np, torch
        mlflow.set_tracking_uri("{quick_run["uri"]}")
        for uri in ("models:/{final.model_id}", "models:/{best.model_id}", "runs:/{run["run_id"]}/{final.name}"):
            model = mlflow.pytorch.load_model(uri, map_location="cpu")
            x = model.sample(3, generator=torch.Generator().manual_seed(0))
            assert x.dtype == torch.uint8 and x.shape == (3, 1, 28, 28), x.shape
        z = np.random.default_rng(0).standard_normal((4, model.config.latent_dim)).astype(np.float32)
        images = mlflow.pyfunc.load_model("models:/{final.model_id}").predict(z)
        with torch.no_grad():
            expected = model.decoder_mean(torch.from_numpy(z)).numpy()
        assert images.shape == (4, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
        assert np.allclose(images, expected, atol=1e-6)
        print(type(model).__name__, model.training)
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # MLflow downloads each model into a temporary folder it keeps
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["VAEMLP", "False"]  # in eval mode, as it was evaluated


def test_exported_samples_scored_by_bench_eval_reproduce_the_runs_fid(quick_run, tmp_path, monkeypatch, capsys):
    """The acceptance path: `bench sample` with the run's evaluation seed and count to .npz, `bench eval` of that
    file under the suite's protocol: the same FID to 1e-6, the same fingerprint, a row in the quick leaderboard.
    Bad input exits 2 with one line."""
    results = tmp_path / "results"  # a copy of the quick suite's store: the shared one stays as other tests expect
    shutil.copytree(quick_run["results"], results)
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    uri = f"sqlite:///{results / 'mlflow.db'}"
    run = child_runs(uri).query("`tags.bench.model` == 'gan-mlp'").iloc[0]
    n, seed = int(run["params.eval.num_samples"]), int(run["params.eval.seed"])
    cli = CliRunner()
    out = tmp_path / "exported.npz"
    result = cli.invoke(main, ["sample", run["run_id"], "-n", str(n), "--seed", str(seed), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert np.load(out)["samples"].shape == (n, 1, 28, 28) and np.load(out)["samples"].dtype == np.uint8
    overrides = [x for o in TINY for x in ("--set", o)]
    args = ["eval", "--suite", "quick", "--dataset", "digits", "--name", "exported", *overrides]
    result = cli.invoke(main, [*args, "--samples", str(out)])
    assert result.exit_code == 0, result.output
    runs = search(uri)
    ext = runs[runs["tags.bench.family"] == "external"].iloc[0]
    assert abs(ext["metrics.fid"] - run["metrics.fid"]) < 1e-6
    assert ext["tags.bench.protocol"] == run["tags.bench.protocol"] and ext["tags.bench.model"] == "exported"
    # print-only: the same numbers and fingerprint as the logged row (the same code), nothing logged
    printed = cli.invoke(main, [*args[:5], *overrides, "--samples", str(out), "--json"])
    assert printed.exit_code == 0, printed.output
    scored = json.loads(printed.stdout)
    assert scored["protocol"] == run["tags.bench.protocol"] and len(search(uri)) == len(runs)
    for key in ("fid", "fid_inf", "kid_mean", "precision", "recall", "density", "coverage", "copying_ct"):
        assert abs(scored["metrics"][key] - ext[f"metrics.{key}"]) <= 1e-9 * max(1.0, abs(ext[f"metrics.{key}"]))
    # folder against folder: the samples and the suite's reference split as PNG files, the domain encoder
    from PIL import Image

    from bench.data import load

    samples_dir, reference_dir = tmp_path / "samples-png", tmp_path / "reference-png"
    samples_dir.mkdir(), reference_dir.mkdir()
    for i, image in enumerate(np.load(out)["samples"][:, 0]):
        Image.fromarray(image).save(samples_dir / f"{i:05d}.png")
    carved = load("digits", validation=tiny_config().suite("quick").eval.validation_images)
    for i, image in enumerate(carved.train_images[:, 0].numpy()):
        Image.fromarray(image).save(reference_dir / f"{i:05d}.png")
    folders = cli.invoke(main, ["eval", "--suite", "quick", "--dataset", "digits", *overrides, "--samples",
                                str(samples_dir), "--reference", str(reference_dir), "--json"])  # fmt: skip
    assert folders.exit_code == 0, folders.output
    pairwise = json.loads(folders.stdout)
    for key in ("fid", "fid_inf", "kid_mean", "precision", "recall", "density", "coverage"):
        assert abs(pairwise["metrics"][key] - ext[f"metrics.{key}"]) <= 1e-9 * max(1.0, abs(ext[f"metrics.{key}"]))
    assert pairwise["protocol"] != scored["protocol"]  # another reference: a fingerprint of its own
    # the Python API: the same numbers again
    import bench

    capsys.readouterr()
    api = bench.evaluate(out, suite="quick", dataset="digits", overrides=TINY, results=results, metrics=["fid"])
    shown = {k: v for k, v in api["metrics"].items() if not k.startswith("eval/")}  # the sample counts stay
    assert shown == {"fid": scored["metrics"]["fid"]} and api["protocol"] == scored["protocol"]
    assert api["encoder"] == "domain"
    assert "reference features of digits/train" in capsys.readouterr().err  # the API says what it is doing
    # folder against folder without a dataset: Inception, whose weights this machine lacks (an empty hub cache)
    bad_api = cli.invoke(main, ["eval", "--samples", str(samples_dir), "--reference", str(reference_dir), "--json"],
                         env={"TORCH_HOME": str(tmp_path / "torch")})  # fmt: skip
    assert bad_api.exit_code == 2 and "the inception encoder needs" in bad_api.output
    domain = cli.invoke(main, ["eval", "--samples", str(samples_dir), "--reference", str(reference_dir),
                               "--encoder", "domain"])  # fmt: skip
    assert domain.exit_code == 2 and "domain encoder is trained on a dataset" in domain.output
    board = cli.invoke(main, ["report", "--suite", "quick", "--out", str(tmp_path / "r")])
    assert board.exit_code == 0, board.output
    assert "exported (external samples)" in (tmp_path / "r" / "leaderboard.md").read_text()
    csv = pd.read_csv(tmp_path / "r" / "leaderboard.csv")
    assert abs(csv[csv["model"] == "exported"]["fid_mean"].iloc[0] - run["metrics.fid"]) < 1e-6

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2000, 28, 28, 3), np.uint8))
    result = cli.invoke(main, [*args, "--samples", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "shape (2000, 28, 28, 3)" in result.output
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    result = cli.invoke(main, [*args, "--samples", str(folder)])
    assert result.exit_code == 2 and ".tif, .tiff): notes.txt" in result.output and "not images" in result.output
    few = tmp_path / "few.npy"
    np.save(few, np.zeros((10, 28, 28), np.uint8))
    result = cli.invoke(main, [*args, "--samples", str(few)])
    assert result.exit_code == 2 and "10 samples" in result.output
    result = cli.invoke(main, ["sample", "no-such-run", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "no run 'no-such-run'" in result.output


def test_a_folder_is_scored_a_batch_at_a_time_with_the_numbers_of_the_whole_array(tmp_path, monkeypatch):
    """`bench.evaluate` on folders streams them through the encoder a batch at a time (never read whole: `array` is
    not called, the network never sees more than --batch-size images) and scores exactly what the same images give
    as arrays; the resize, colour modes (1-bit, CMYK) and the self-comparison digest work on the stream. A stand-in
    encoder (a fixed random projection) keeps this in the fast tier; the Inception path is test_inception's."""
    from PIL import Image

    import bench
    from bench.eval import encoders
    from bench.storage import bytes_digest
    from bench.tools.images import FolderImages

    seen = []

    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3 * 16 * 16, 8, generator=torch.Generator().manual_seed(1)))

        def forward(self, x):
            seen.append(len(x))
            return {"features": x.float().flatten(1) @ self.w / 255.0}

    def stand_in(name, dataset, recipe, cache_dir, device):
        return encoders.Encoder("inception", "stand-in", "none", Projection(), {}, feature_dim=8)

    monkeypatch.setattr(encoders, "build_encoder", stand_in)
    monkeypatch.setattr(FolderImages, "array", lambda self: pytest.fail("a folder was read whole"))
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 200, (30, 3, 16, 16), dtype=torch.uint8, generator=g)
    for name, images in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:03d}.png")
    which = ["fid", "kid", "prc"]
    folders = bench.evaluate(tmp_path / "a", tmp_path / "b", metrics=which, batch_size=7)
    assert seen and max(seen) == 7 and sum(seen) == 70  # 40 + 30 images, in batches of 7 at most
    arrays = bench.evaluate(a.numpy(), b.numpy(), metrics=which, batch_size=7)
    assert folders["metrics"]["fid_inception"] > 1 and folders["metrics"] == arrays["metrics"]
    assert folders["encoder"] == "inception" and folders["protocol"] != arrays["protocol"]  # the reference's name
    streamed = FolderImages.scan(tmp_path / "b")
    assert streamed.digest is None and sum(len(x) for x in streamed.batches(4)) == 30
    assert streamed.digest == bytes_digest([b.numpy().tobytes()])  # the pixels' digest, as the array's
    itself = bench.evaluate(tmp_path / "a", tmp_path / "a", metrics=["fid"])
    assert abs(itself["metrics"]["fid_inception"]) < 1e-6
    # an odd-sized, a 1-bit and a CMYK file among RGB PNGs: resized, 0/255, RGB
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    Image.fromarray(a[0].permute(1, 2, 0).numpy()).resize((20, 20)).save(mixed / "000.png")
    Image.fromarray((a[1, 0].numpy() > 127).astype(np.uint8) * 255).convert("1").save(mixed / "001.png")
    Image.fromarray(a[2].permute(1, 2, 0).numpy()).convert("CMYK").save(mixed / "002.tif")
    (mixed / "002.png").unlink()
    folder = FolderImages.scan(mixed)
    assert (folder.shape, folder.resized, len(folder)) == ((3, 16, 16), 1, 40)
    first = torch.cat(list(folder.batches(3)))
    assert first.shape == (40, 3, 16, 16) and set(first[1].unique().tolist()) <= {0, 255}
    assert torch.equal(first[1, 0], first[1, 2])  # 1-bit as grey, made RGB in a colour folder
    assert (first[2].int() - a[2].int()).abs().max() <= 2  # CMYK back to RGB
    assert torch.equal(first[3:], a[3:]) and folder.digest is not None


def test_a_png_folder_reads_as_the_same_images(tmp_path):
    from PIL import Image

    from bench.tools.external import as_images, read_samples

    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for i, im in enumerate(images):
        Image.fromarray(im[0].numpy()).save(tmp_path / f"{i:03d}.png")
    back = as_images(read_samples(tmp_path), (1, 28, 28), "pngs")
    assert torch.equal(back, images)
    # palette PNGs hold indices into a palette: read as the colours they stand for, not as the indices
    grey, colour = tmp_path / "palette-grey", tmp_path / "palette-colour"
    grey.mkdir(), colour.mkdir()
    inverted = [255 - v for v in range(256) for _ in range(3)]  # index i stands for grey 255 - i
    for i, im in enumerate(images):
        p = Image.fromarray(im[0].numpy(), mode="L").convert("P")  # an identity grey palette
        p.save(grey / f"{i:03d}.png")
        q = Image.fromarray(255 - im[0].numpy(), mode="P")
        q.putpalette(inverted)
        q.save(colour / f"{i:03d}.png")
    assert torch.equal(as_images(read_samples(grey), (1, 28, 28), "palette"), images)
    assert torch.equal(as_images(read_samples(colour), (1, 28, 28), "palette"), images)
    floats = as_images(images.permute(0, 2, 3, 1).numpy() / 255.0, (1, 28, 28), "floats")
    assert torch.equal(floats, images)
    # class subfolders (torchvision's ImageFolder layout), in name order; JPEG files (lossy, close)
    classes = tmp_path / "classes"
    for i, im in enumerate(images):
        (classes / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im[0].numpy()).save(classes / f"class{i % 2}" / f"{i:03d}.png")
    order = [0, 2, 4, 1, 3]  # class0's images, then class1's
    assert torch.equal(as_images(read_samples(classes), (1, 28, 28), "classes"), images[order])
    smooth = torch.arange(28, dtype=torch.uint8).repeat(28, 1) * 9  # JPEG keeps a smooth ramp to a level or two
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    Image.fromarray(smooth.numpy()).save(jpegs / "0.jpg", quality=100)
    back = as_images(read_samples(jpegs), (1, 28, 28), "jpegs")
    assert back.shape == (1, 1, 28, 28) and (back[0, 0].int() - smooth.int()).abs().max() <= 3
