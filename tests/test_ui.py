"""`bench ui` serves the MLflow UI on the suite's store (a real server on a free loopback port)."""

from __future__ import annotations

import contextlib
import json
import socket

from bench import tracking
from tests.components import free_port, get, wait_healthy


def test_ui_serves_the_suite_runs(quick_run):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = tracking.serve_ui(quick_run["uri"], "127.0.0.1", port)
    try:
        wait_healthy(proc, base)
        assert b"<html" in get(base + "/").lower()
        exp = json.loads(get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=quick"))
        runs = json.loads(
            get(
                f"{base}/api/2.0/mlflow/runs/search",
                {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 100},
            )
        )
        names = {r["info"]["run_name"] for r in runs["runs"]}
        assert {"gan-mlp/digits/seed0", "vae-mlp/digits/seed1"} <= names
    finally:
        tracking.stop_ui(proc)
    assert proc.poll() is not None


def test_bench_ui_prints_the_runs_link_and_a_kill_stops_its_server(quick_run):
    """`bench ui` as a user runs it: it prints the suite's training-runs URL, and a plain `kill` (SIGTERM) of bench
    ends the MLflow server it started (that server used to stay on the port)."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    port = free_port()
    env = {**os.environ, "BENCH_RESULTS": str(quick_run["results"])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "ui", "--port", str(port), "--suite", "quick"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        exp = json.loads(get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=quick"))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"{base}/#/experiments/{exp['experiment']['experiment_id']}/runs" in out
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the MLflow server outlived bench ui"


@contextlib.contextmanager
def http_stub(status: int):
    """A loopback HTTP server answering every GET with `status` (an MLflow server's /health, an auth proxy's 401)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_bench_ui_with_a_server_uri_points_at_that_server():
    from click.testing import CliRunner

    from bench.cli import main

    with http_stub(200) as uri:
        result = CliRunner().invoke(main, ["ui", "--tracking-uri", uri])
    assert result.exit_code == 0 and f"its UI: {uri}" in result.output
