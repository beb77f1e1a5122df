"""genbench as a package: a wheel built from this tree, installed outside it, runs from an empty folder with the
configuration that ships with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, WORKER_THREADS


@pytest.mark.integration  # pip, and bench in subprocesses
def test_the_wheel_runs_a_suite_from_an_empty_folder(tmp_path):
    wheels, site, empty, source = (tmp_path / name for name in ("wheels", "site", "empty", "source"))
    empty.mkdir()
    # a copy of the source: building in place would leave build/ in the checkout
    skip = shutil.ignore_patterns(".git", ".venv", "results", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, symlinks=True, ignore=skip)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True,
                   timeout=300, cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("genbench-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "BENCH_OFFLINE": "1", **WORKER_THREADS}  # the package, not this tree

    def bench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench", *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip

    where = subprocess.run([sys.executable, "-c", "import bench; print(bench.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert where.stdout.startswith(str(site)), where
    listing = bench("list")
    assert listing.returncode == 0 and "quick" in listing.stdout and "mnist-cifar" in listing.stdout, listing.stderr
    settings = [a for s in (*TINY, "models=['vae-mlp']", "seeds=[0]") for a in ("--set", s)]
    run = bench("run", "--suite", "quick", "--no-progress", *settings)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "done: 1 finished" in run.stdout and (empty / "results" / "mlflow.db").is_file()
    report = bench("report", "--suite", "quick")
    assert report.returncode == 0 and (empty / "results" / "reports" / "quick" / "leaderboard.html").is_file()
    # scoring in one line, printed: held-out digits against the training split, the domain encoder
    import json

    import numpy as np

    from bench.data import load

    np.save(empty / "test.npy", load("digits").test_images.numpy())
    scored = bench("eval", "--samples", "test.npy", "--reference", "digits:train", "--json",
                   "--set", "features.domain.steps=150", "--set", "features.domain.min_test_accuracy=0.5")  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    metrics = json.loads(scored.stdout)["metrics"]
    assert 0 < metrics["fid_domain"] < 50 and metrics["eval/generated_images"] == 360  # outside a suite: named
    # a suite from Python: the finished cell is skipped
    code = f"import bench; print([o['status'] for o in bench.run_suite('quick', overrides={settings[1::2]!r})])"
    again = subprocess.run([sys.executable, "-c", code], cwd=empty, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0 and again.stdout.strip().endswith("['SKIPPED']"), again.stderr[-2000:]
    # `bench init` writes the shipped configuration here, and bench then reads it from here
    assert bench("init").returncode == 0
    assert (empty / "bench.toml").read_text() == (REPO / "bench.toml").read_text()
    with open(empty / "bench.toml", "a") as f:
        f.write('\n[suites.mine]\ndatasets = ["digits"]\nmodels = ["vae-mlp"]\n')
    assert "mine " in bench("list").stdout
    again = bench("init")
    assert again.returncode == 2 and "exists already" in again.stderr


OLDER_TORCH = "/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"  # this machine's older torch


@pytest.mark.integration  # a new virtualenv, an older torch, and pip's resolver against the package index
def test_installing_the_wheel_keeps_a_labs_older_torch(tmp_path):
    """A lab's environment with torch 2.13 and its torchvision already installed: pip's resolver keeps both when it
    installs genbench's wheel (exact pins replaced torch). A dry run: the CPU-only torch 2.13 wheel on this
    machine's disk does not run with the package index's torchvision 0.28 (built for the CUDA torch), so the
    resolver's decision is what can be checked here; `--report` lists what it would install."""
    import json

    wheels, venv, source = tmp_path / "wheels", tmp_path / "lab", tmp_path / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "results", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, symlinks=True, ignore=skip)  # building in place would leave build/ in the checkout
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(source)], check=True, timeout=300, cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("genbench-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    torch = OLDER_TORCH if os.path.exists(OLDER_TORCH) else "torch==2.13.*"
    subprocess.run([*pip, "install", torch, "torchvision==0.28.*"], check=True, timeout=900)
    report = tmp_path / "report.json"
    subprocess.run([*pip, "install", "--dry-run", "--report", str(report), str(wheel)], check=True, timeout=900)
    install = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    assert "genbench" in install and "torch_fidelity" in {n.replace("-", "_") for n in install}
    assert "torch" not in install and "torchvision" not in install, {n: install[n] for n in install if "torch" in n}


def test_the_oldest_constraints_are_the_floors_of_the_ranges():
    """constraints-oldest.txt (what `make test-oldest` installs) pins every dependency of pyproject.toml at its
    range's lower bound: a floor raised in one and not the other fails here, not in a lab's environment."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        (low,) = [s.version for s in req.specifier if s.operator == ">="]  # every dependency states its floor
        floors[req.name.lower().replace("_", "-")] = Version(low)
    pins = {}
    for line in (REPO / "constraints-oldest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            pins[req.name.lower().replace("_", "-")] = Version(spec.version)
    assert pins == floors
