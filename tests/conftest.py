"""Shared fixtures: the repository's bench.toml shrunk with --set overrides to a CPU-seconds budget, one
session-wide run of that tiny quick suite into a temporary MLflow store, and the real components the tests share
(one `mlflow server`; tests/components.py makes each once per session across pytest-xdist workers).

Also two session rules: every test's call and tear-down stays within TEST_BUDGET_S and every set-up (the shared
fixtures are built there) within SETUP_BUDGET_S, or the session fails naming it; and `make check` deselects the
tests marked `integration` (those that need a server, a cluster, a browser, a subprocess suite or the session's
trained suite; marked here by the fixtures they use)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from bench import config
from tests import components

pytest_plugins = ["tests.encoder_fixtures"]  # the Ray instance, the ViT-scored run, encoder weights

REPO = Path(__file__).resolve().parents[1]
BENCH_TOML = REPO / "bench.toml"

# genbench's cache (domain encoders, real features) for this test process, removed after it: never the user's
# ~/.cache/genbench. Suites the tests run (in this process, its workers, subprocesses, Ray) inherit it.
os.environ["BENCH_CACHE"] = tempfile.mkdtemp(prefix="genbench-test-cache-")
atexit.register(shutil.rmtree, os.environ["BENCH_CACHE"], ignore_errors=True)

TINY = (
    "train.steps=20",
    "train.batch_size=32",
    "train.log_every=10",
    "train.sample_every=10",
    "train.checkpoint_every=10",
    "eval.num_samples=200",
    "eval.kid_subset_size=100",
    "eval.kid_subsets=10",
    "eval.iwae_k=16",
    "eval.ais.images=8",
    "eval.ais.chains=2",
    "eval.ais.steps=10",
    "eval.ais.leapfrog=2",
    "eval.ais.validation_images=4",
    "eval.ais.validation_steps=5",
    "eval.ais.bdmc_images=2",
    "eval.ais.own_steps=20",
    "features.domain.steps=150",
    "features.domain.min_test_accuracy=0.5",
)

# Both cores: make test runs two xdist workers, each with one thread (two each would oversubscribe the machine).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))

TEST_BUDGET_S = 150  # no test's call or tear-down may take longer: split it or share a fixture instead
# A set-up may take longer: it builds the session's shared fixtures (a trained suite, the ViT-scored Ray run) once for
# every test that reads them (the ViT run's set-up takes 105 s alone, up to 138 s beside the fast tier).
SETUP_BUDGET_S = 200
INTEGRATION_FIXTURES = {  # a test that uses one of these is `integration` (not in `make check`)
    "domain_cache", "quick_run", "killed_and_resumed", "uninterrupted", "mlflow_server", "local_ray", "vit_run",
    "browser", "killed_sweep",
}  # fmt: skip
_over_budget: list[str] = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: needs a server, cluster, browser, subprocess suite or the session's trained suite"
    )
    config.addinivalue_line("markers", "ray: uses Ray (run on its own, after the others: `make test`)")
    config.addinivalue_line("markers", "slow: pure computation of more than ten seconds (not in `make check`)")
    config.addinivalue_line(
        "markers", "long: longer than the budget by what it tests (an outage past MLflow's retries; make test-long)"
    )


# Modules whose tests share a module-scoped fixture (a trained model, a browser, a killed sweep): one xdist worker
# each, so the fixture is made once. (test_ray and test_ray_cluster share the group "ray" in their own files.)
MODULE_GROUPS = ("test_ais", "test_browser", "test_evaluate", "test_features", "test_inception", "test_sweep")
# The longest tests (and groups) start first, so that no worker is left alone with one of them at the end; the rest
# keep their order after these. Measured with `pytest --durations`: each of these takes 30-240 s of one worker.
LONG_FIRST = (
    "tests/test_ray_cluster.py",
    "tests/test_ray.py",
    "tests/test_server.py::test_a_tracking_server_down",
    "tests/test_encoders.py::test_a_suite_with_two_encoders",
    "tests/test_lease.py::test_two_bench_runs",
    "tests/test_sweep.py",
    "tests/test_package.py",
    "tests/test_browser.py",
    "tests/test_isolation.py",
    "tests/test_plugins.py::test_the_readme_plugin",
    "tests/test_server.py",
    "tests/test_executors.py::test_two_cells_per_gpu",
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        groups = [m.args[0] for m in item.iter_markers("xdist_group") if m.args]
        if "local_ray" in getattr(item, "fixturenames", ()) or "ray" in groups:
            item.add_marker(pytest.mark.ray)
        module = item.path.stem
        if module in MODULE_GROUPS:
            item.add_marker(pytest.mark.xdist_group(module))

    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONG_FIRST) if item.nodeid.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: within a rank, the collection's order


def pytest_runtest_logreport(report):
    """Runs in the process that reports (the controller under xdist): remember phases over the budget."""
    if "long" in report.keywords:  # `make test-long`: minutes by design, outside make test
        return
    if report.duration > (SETUP_BUDGET_S if report.when == "setup" else TEST_BUDGET_S):
        _over_budget.append(f"{report.nodeid} ({report.when}): {report.duration:.0f} s")


def pytest_terminal_summary(terminalreporter):
    if _over_budget:
        terminalreporter.section(f"tests over the budget ({TEST_BUDGET_S} s a call, {SETUP_BUDGET_S} s a set-up)")
        for line in _over_budget:
            terminalreporter.write_line(line)
        terminalreporter.write_line("split them, or share a session fixture (tests/components.py)")


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller ends the shared components once every worker is done
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        components.end_registered(factory.getbasetemp() / components.SHARED)
    if _over_budget and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("BENCH_OFFLINE", "1")  # tests never reach for the network


def wait_until(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something truthy (returned); fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.5)


def tiny_config(*extra: str, path: Path = BENCH_TOML, suite: str = "quick") -> config.BenchConfig:
    return config.load(path, TINY + extra, suite)


@pytest.fixture(scope="session")
def domain_cache(tmp_path_factory) -> Path:
    """A results folder whose cache holds the tiny recipe's digits domain encoder, trained once per session: every
    suite the tests run starts from a copy (`seed_cache`), since training it is not what they test (tests/
    test_features.py does). Only the encoder: each suite still computes its real features and copying cells."""

    def build(folder: Path) -> Path:
        from bench.data import load
        from bench.eval.encoders import build_encoder

        cfg = tiny_config()
        digits = load("digits", validation=cfg.suite("quick").eval.validation_images)  # the suite's carve
        build_encoder("domain", digits, cfg.domain, folder / "cache", torch.device("cpu"))
        return folder

    return components.once_per_session(tmp_path_factory, "domain-cache", build)


@pytest.fixture(scope="session")
def quick_run(domain_cache, tmp_path_factory):
    """The quick suite (digits × gan-mlp, vae-mlp × seeds 0, 1), tiny budget, into a fresh sqlite store: one trained
    cell per family and seed, once per test session, read by every test that looks at runs, metrics, models,
    reports and the UI (none writes into it but test_runner's re-run, which only adds a parent run)."""

    def build(results: Path) -> dict:
        from bench.run.suite import run_suite
        from bench.tracking import default_uri

        cfg = tiny_config()
        lines: list[str] = []
        with own_cache(results / "cache"):  # its own, so the tests can see what this suite cached
            seed_cache(domain_cache, results)
            outcomes = run_suite(cfg, "quick", results=results, overrides=TINY, progress=False, echo=lines.append)
        return {"results": results, "uri": default_uri(results), "outcomes": outcomes, "config": cfg, "log": lines,
                "cache": results / "cache"}  # fmt: skip

    return components.once_per_session(tmp_path_factory, "quick-run", build)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """The session's one `mlflow server` (sqlite backend, proxied artifacts) over HTTP. Tests that share it keep
    their runs apart by suite name (`suite_config`), so no test sees, skips or waits for another's cells."""
    return components.shared_server(tmp_path_factory)


def suite_config(folder: Path, name: str) -> Path:
    """The repository's bench.toml with the quick suite renamed `name` (its own MLflow experiment on a shared
    server); cells keep their hashes (the suite's name is not part of a cell's key)."""
    text = (
        BENCH_TOML.read_text()
        .replace("[suites.quick]", f"[suites.{name}]")
        .replace("[suites.quick.", f"[suites.{name}.")
    )
    path = folder / f"bench-{name}.toml"
    path.write_text(text)
    return path


def seed_cache(domain_cache: Path, results: Path) -> None:
    """The tiny recipe's domain encoder, trained once per session (`domain_cache`), copied into genbench's cache
    (this process's BENCH_CACHE, which the suite in `results` uses)."""
    from bench.storage import cache_dir

    shutil.copytree(domain_cache / "cache", cache_dir(), dirs_exist_ok=True)


@contextlib.contextmanager
def own_cache(folder: Path):
    """BENCH_CACHE set to `folder` while the block runs (for a suite whose cache a test looks into)."""
    before = os.environ["BENCH_CACHE"]
    os.environ["BENCH_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        os.environ["BENCH_CACHE"] = before


# A subprocess suite of the tests gets this xdist worker's share of the cores (all of them in one process), as the
# tests in this process do; every subprocess suite gets the same, so a resumed run can equal an uninterrupted one.
WORKER_THREADS = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // WORKERS))}


def bench_run(results: Path, *extra: str, threads: int | None = None) -> subprocess.Popen:
    """`bench run` of the tiny quick suite with `extra` settings, as a user runs it (the console script), into
    `results`, in its own process group (so a test can kill the suite as a whole); on `threads` torch threads (default:
    WORKER_THREADS)."""
    bench = Path(sys.executable).parent / "bench"
    args = [str(bench), "run", "--config", str(BENCH_TOML), "--suite", "quick", "--no-progress"]
    for setting in TINY + extra:
        args += ["--set", setting]
    env = {**os.environ, "BENCH_RESULTS": str(results), "BENCH_OFFLINE": "1", **WORKER_THREADS}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


RESUME = ("models=['gan-mlp']", "seeds=[0]", "train.steps=300", "train.checkpoint_every=50", "train.eval_every=100")
RESUME_THREADS = 1  # the RESUME runs compared number for number: one thread, as a Ray task (num_cpus=1) trains


@pytest.fixture(scope="session")
def killed_and_resumed(domain_cache, tmp_path_factory):
    """Issue 15's scenario, run once for the tests that look at it (tests/test_isolation.py checks the numbers,
    tests/test_browser.py the MLflow UI; neither writes into it): `bench run` of gan-mlp seed 0 for 300 steps is
    SIGKILLed as a whole (parent and worker) after its first checkpoint, then run again to the end."""

    def build(results: Path) -> dict:
        seed_cache(domain_cache, results)
        proc = bench_run(results, *RESUME, threads=RESUME_THREADS)
        checkpoints = results / "checkpoints"
        wait_until(lambda: any(checkpoints.glob("*/last.pt")), 120, "the first checkpoint")
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
        proc.wait(timeout=30)
        (last,) = checkpoints.glob("*/last.pt")
        step = torch.load(last, weights_only=True)["step"]
        again = bench_run(results, *RESUME, threads=RESUME_THREADS)
        out, _ = again.communicate(timeout=300)
        return {"results": results, "killed_at": step, "returncode": again.returncode, "out": out}

    return components.once_per_session(tmp_path_factory, "killed-and-resumed", build)


@pytest.fixture(scope="session")
def uninterrupted(domain_cache, tmp_path_factory) -> Path:
    """`bench run` of the RESUME cell from start to end without a stop: the numbers an interrupted and resumed run
    of it must reproduce (tests/test_isolation.py after a SIGKILL, tests/test_ray_cluster.py after its node died).
    On one thread, as a Ray task trains (tests/test_ray_cluster.py) and as `killed_and_resumed`: a CPU run equals
    another only on the same number of threads."""

    def build(results: Path) -> Path:
        seed_cache(domain_cache, results)
        proc = bench_run(results, *RESUME, threads=RESUME_THREADS)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        return results

    return components.once_per_session(tmp_path_factory, "uninterrupted", build)


def search(uri: str) -> pd.DataFrame:
    """mlflow.search_runs as a user would call it; set_tracking_uri also exports MLFLOW_TRACKING_URI, so restore."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=["quick"])
    finally:
        mlflow.set_tracking_uri(previous or "")
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def child_runs(uri: str) -> pd.DataFrame:
    """The cell runs (not the parent, not the real-data reference)."""
    runs = search(uri)
    return runs[runs["tags.bench.cell"].notna() & (runs["tags.bench.family"] != "real")]


def real_runs(uri: str) -> pd.DataFrame:
    runs = search(uri)
    return runs[runs["tags.bench.family"] == "real"]
