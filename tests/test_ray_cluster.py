"""A cell survives its node: a two-node Ray cluster started with `ray start` on this machine (a head, and a worker
node that alone offers the `trainer` resource the cells ask for), a real `mlflow server` with proxied artifacts, and
the worker node SIGKILLed in the middle of a cell."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest

from tests.components import free_port
from tests.conftest import RESUME, TINY, seed_cache, suite_config, wait_until

pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time: its `ray stop --force` ends every Ray here

SUITE = "ray-cluster"  # the quick suite under its own experiment on the session's server
SETTINGS = RESUME  # the cell of tests/test_isolation.py: the session's `uninterrupted` run is its reference


def _bench(results: Path, config: Path, env: dict, *args: str) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "bench"), "run", "--config", str(config), "--suite", SUITE,
               "--no-progress", *args, *(a for s in (*TINY, *SETTINGS) for a in ("--set", s))]  # fmt: skip
    return subprocess.Popen(command, env={**env, "BENCH_RESULTS": str(results)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def _node(ray: str, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([ray, "start", *args, "--block", "--disable-usage-stats"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def test_a_cell_whose_node_dies_is_retried_elsewhere_and_resumes(domain_cache, mlflow_server, uninterrupted, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is installed by make test (pip install '.[ray]')")
    ray = str(Path(sys.executable).parent / "ray")
    port = free_port()
    # Ray's session folder holds Unix sockets, whose paths must stay under 108 bytes: a short folder, not tmp_path
    short = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    env = {**os.environ, "BENCH_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RAY_TMPDIR": str(short)}
    # Ray's token authentication: every node and the driver share one token (a local head enables it by default)
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    memory = "--object-store-memory=100000000"
    nodes = [_node(ray, "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", memory, env=env)]
    worker = ["--address", f"127.0.0.1:{port}", "--num-cpus=1", '--resources={"trainer": 1}', memory]
    try:
        status = [ray, "status", "--address", f"127.0.0.1:{port}"]
        wait_until(lambda: subprocess.run(status, env=env, capture_output=True, timeout=60).returncode == 0, 120,
                   "the Ray head node")  # fmt: skip
        nodes.append(_node(ray, *worker, env=env))
        uri, config = mlflow_server, suite_config(tmp_path, SUITE)
        results = tmp_path / "driver"
        seed_cache(domain_cache, results)
        cluster = {**env, "BENCH_RAY_RESOURCES": json.dumps({"trainer": 1})}
        suite = _bench(results, config, cluster, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
                       "--tracking-uri", uri)  # fmt: skip
        client = mlflow.MlflowClient(uri)

        def checkpointed():
            exp = client.get_experiment_by_name(SUITE)
            runs = client.search_runs([exp.experiment_id]) if exp else []
            cells = [r for r in runs if r.data.tags.get("bench.model") == "gan-mlp"]
            if not cells:
                return None
            stored = {a.path for a in client.list_artifacts(cells[0].info.run_id, "resume")}
            return cells[0] if "resume/last.pt" in stored else None

        try:
            cell = wait_until(checkpointed, 300, "the cell's first checkpoint in the store")
        except AssertionError:
            os.killpg(suite.pid, signal.SIGKILL)
            raise AssertionError(suite.communicate()[0][-4000:]) from None
        os.killpg(nodes[1].pid, signal.SIGKILL)  # the worker node dies, its raylet and the cell's worker with it
        nodes[1].wait(timeout=30)
        nodes.append(_node(ray, *worker, env=env))  # a new node with the resource: Ray retries the task there
        out = suite.communicate(timeout=900)[0]
        assert suite.returncode == 0, out[-4000:]
        run = client.get_run(cell.info.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["bench.resumes"] == "1", out[-4000:]
        exp = client.get_experiment_by_name(SUITE)
        cells = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bench.model") == "gan-mlp"]
        assert len(cells) == 1  # one run for the cell, however often it moved
        # the same cell never stopped, one thread as on the Ray worker: the same numbers (CPU determinism)
        reference = mlflow.MlflowClient(f"sqlite:///{uninterrupted / 'mlflow.db'}")
        (ref,) = [r for r in reference.search_runs([reference.get_experiment_by_name("quick").experiment_id])
                  if r.data.tags.get("bench.model") == "gan-mlp"]  # fmt: skip
        for key in ("fid", "kid_mean", "precision", "nll_ais"):
            assert run.data.metrics[key] == ref.data.metrics[key], key
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(short, ignore_errors=True)
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
