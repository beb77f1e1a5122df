"""One cell, one trainer: a cell's lease in the tracking store (a heartbeat on its RUNNING run), two `bench run`s of
one suite at once, a holder that stopped beating taken over, and what `--dry-run` says about cells held elsewhere."""

from __future__ import annotations

import time

import mlflow
import pytest
from click.testing import CliRunner

from bench import schema, tracking
from bench.cli import main
from tests.conftest import BENCH_TOML, TINY, bench_run, child_runs, seed_cache


def test_two_bench_runs_at_once_train_every_cell_once(domain_cache, tmp_path):
    """Two `bench run --suite quick` started together on one store (and one results folder): each cell is trained
    by exactly one of them (the training lines of both outputs and the runs in the store count four), the other
    waits for it; both exit 0 and both say every cell is done."""
    seed_cache(domain_cache, tmp_path)  # the session's domain encoder: not what is under test
    first, second = bench_run(tmp_path, threads=1), bench_run(tmp_path, threads=1)  # side by side: a core each
    outs = [p.communicate(timeout=900)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    trained = [line for out in outs for line in out.splitlines() if "training 20 steps" in line]
    assert len(trained) == 4, trained
    uri = tracking.default_uri(tmp_path)
    runs = child_runs(uri)
    cells = runs[runs["tags.bench.family"].isin(["gan", "vae"])]
    assert len(cells) == 4 and (cells["status"] == "FINISHED").all() and cells["tags.bench.cell"].nunique() == 4
    waited = [line for out in outs for line in out.splitlines() if "FINISHED by another bench run" in line]
    elsewhere = [
        line
        for out in outs
        for line in out.splitlines()
        if "running elsewhere" in line or "another bench run took it at the same moment" in line
    ]
    assert (
        len(waited) == len(elsewhere)
        and len(trained) + len(waited) + sum(out.count("already FINISHED") for out in outs) == 8
    )  # every cell accounted for in both processes
    reports = [CliRunner().invoke(main, ["report", "--suite", "quick", "--out", str(tmp_path / f"r{i}")], env={
        "BENCH_RESULTS": str(tmp_path)}) for i in (1, 2)]  # fmt: skip
    assert all(r.exit_code == 0 for r in reports)
    assert (tmp_path / "r1" / "leaderboard.csv").read_text() == (tmp_path / "r2" / "leaderboard.csv").read_text()


def test_a_holder_that_stopped_beating_loses_the_cell_and_dry_run_names_live_holders(
    domain_cache, tmp_path, monkeypatch
):
    """A RUNNING run of a cell whose heartbeat stops changing (its node died) is taken over once this `bench run`
    has watched it unchanged for the lease's length by its own clock: marked KILLED with why, and the cell trained
    under a run of its own. A live holder (a fresh beat) is reported by `--dry-run` as running elsewhere, with its
    host, pid and start."""
    from bench.run import claim
    from bench.tracking import lease as lease_module
    from bench.tracking import runs as runs_module

    class Hurried(lease_module.Watch):  # this observer's clock runs 30 s per look: the lease passes in three looks
        def __init__(self):
            looks = iter(range(0, 10**6, 30))
            super().__init__(clock=lambda: float(next(looks)))

    monkeypatch.setattr(runs_module, "Watch", Hurried)
    monkeypatch.setattr(claim, "WAIT_POLL_S", 0.05)
    seed_cache(domain_cache, tmp_path)
    uri = tracking.default_uri(tmp_path)
    args = ["--suite", "quick", "--config", str(BENCH_TOML)]
    sets = [a for t in (*TINY, "models=['gan-mlp']", "seeds=[0]") for a in ("--set", t)]
    plan = CliRunner().invoke(main, ["run", *args, "--dry-run", *sets], env={"BENCH_RESULTS": str(tmp_path)})
    assert plan.exit_code == 0, plan.output
    key = next(line.split()[2] for line in plan.output.splitlines() if "gan-mlp/digits/seed0" in line)
    tracker = tracking.Tracker(uri, "quick", tmp_path / "artifacts")
    held = tracker.start_run("gan-mlp/digits/seed0", {schema.CELL: key, schema.HOST: "node-7", schema.PID: "4242",
                                                       schema.HEARTBEAT: f"{time.time():.0f}"})  # fmt: skip
    plan = CliRunner().invoke(main, ["run", *args, "--dry-run", *sets], env={"BENCH_RESULTS": str(tmp_path)})
    assert "running elsewhere (host node-7, pid 4242, since" in plan.output, plan.output
    # the node died now: its last beat (by its clock, an hour ahead of this one) never changes again
    held.set_tags({schema.HEARTBEAT: f"{time.time() + 3600:.0f}"})
    ran = CliRunner().invoke(main, ["run", *args, "--no-progress", *sets], env={"BENCH_RESULTS": str(tmp_path)})
    assert ran.exit_code == 0, ran.output
    said = ran.output.splitlines()
    first = next(i for i, line in enumerate(said) if "running elsewhere (host node-7, pid 4242" in line)
    taken = next(i for i, line in enumerate(said) if "stopped renewing its lease (host node-7, pid 4242" in line)
    assert first < taken, ran.output  # first seen live (its beat not yet watched), taken over after the lease
    client = mlflow.MlflowClient(uri)
    old = client.get_run(held.run_id)
    assert old.info.status == "KILLED" and "stopped renewing the cell's lease" in old.data.tags[schema.ERROR]
    runs = child_runs(uri)
    done = runs[(runs["tags.bench.cell"] == key) & (runs["status"] == "FINISHED")]
    assert len(done) == 1 and done.iloc[0]["run_id"] != held.run_id


def test_a_pid_is_looked_up_only_in_the_process_space_it_belongs_to(tmp_path):
    """Two containers with host networking share a hostname, not their PIDs: a RUNNING run whose owner PID is not a
    live process here is closed as orphaned only when it was written in this boot and PID namespace; one from
    another PID namespace (same hostname) is left to its heartbeat."""
    import socket
    import subprocess
    import sys

    from bench.tracking.lease import process_space

    tracker = tracking.Tracker(tracking.default_uri(tmp_path), "quick", tmp_path / "artifacts")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a PID that no longer exists
    here = {schema.HOST: socket.gethostname(), schema.PID: str(gone.pid)}
    ours = tracker.start_run("ours", {**here, schema.PROCESS_SPACE: process_space()})
    other = tracker.start_run("other", {**here, schema.PROCESS_SPACE: "another-boot/pid:[1]"})
    unmarked = tracker.start_run("unmarked", here)  # no record of where its PID is valid
    closed = {name for name, _ in tracker.close_orphans()}
    assert closed == {"ours"}
    assert ours.status() == "KILLED" and other.status() == "RUNNING" and unmarked.status() == "RUNNING"
    assert set(tracking.owner_tags(1)) == {schema.HOST, schema.PID, schema.PROCESS_SPACE}


def test_a_holder_loses_its_lease_to_a_takeover_or_a_pause_and_training_stops_without_writing(tmp_path, monkeypatch):
    """Fencing, scripted (no sleeps): the holder's lease reads its run back at every beat. Another claim's id on the
    run (a takeover), the run marked KILLED (released by a taker), or no beat through for the lease's length by the
    holder's own clock (SIGSTOP, a suspended VM, a store away) each lose the lease; the training loop then stops
    before its next step or checkpoint, and the checkpoint on disk is the last one written while it held the cell."""
    import torch

    import baselines
    from bench.config import TrainConfig
    from bench.run import checkpoints
    from bench.run.train import train
    from bench.tracking import lease as lease_module

    tracker = tracking.Tracker(tracking.default_uri(tmp_path), "quick", tmp_path / "artifacts")
    client = mlflow.MlflowClient(tracker.uri)

    def held(name: str) -> tracking.Run:
        return tracker.start_run(name, {schema.CELL: name, schema.HOLDER: "claim-a"})

    run = held("taken")
    with run.heartbeat("claim-a", interval=3600) as lease:  # the test beats by hand
        assert lease.lost() is None and client.get_run(run.run_id).data.tags.get(schema.HEARTBEAT)
        client.set_tag(run.run_id, schema.HOLDER, "claim-b")  # another process reopened the run under its claim
        lease.beat()
        assert lease.lost() == "another process took the cell over"
        with pytest.raises(tracking.LeaseLost):
            lease.check()

    run = held("released")
    with run.heartbeat("claim-a", interval=3600) as lease:
        client.set_terminated(run.run_id, "KILLED")  # what a taker does to a stale holder's run first
        lease.beat()
        assert lease.lost() == "its run was marked KILLED by another process"

    run = held("paused")
    with run.heartbeat("claim-a", interval=3600) as lease:
        clock = time.monotonic() + lease_module.RENEW_S + 10  # the process was stopped for longer than it may renew
        monkeypatch.setattr(lease_module.time, "monotonic", lambda: clock)
        assert lease.lost().startswith(f"no heartbeat got through for {lease_module.RENEW_S + 10:.0f} s")
    monkeypatch.undo()

    # the training loop: the lease is lost when step 5 is logged, before step 5's checkpoint
    class Logger:
        lost = False

        def log_metrics(self, metrics, step=None):
            Logger.lost = Logger.lost or step == 5

        def log_samples(self, images, step):
            pass

    def fence():
        if Logger.lost:
            raise tracking.LeaseLost("another process took the cell over")

    torch.manual_seed(0)
    model = baselines.build("gan-mlp", None, (1, 28, 28))
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    cfg = TrainConfig(steps=10, batch_size=8, log_every=1, sample_every=100, checkpoint_every=1, eval_every=0)
    last = tmp_path / "ck" / "last.pt"
    with pytest.raises(tracking.LeaseLost):
        train(model, images, cfg, seed=0, logger=Logger(), checkpoint=last, progress=False, fence=fence)
    assert checkpoints.read(last)["step"] == 4  # step 5's checkpoint was never written


def test_a_lease_expires_by_the_observers_clock_only():
    """Expiry compares no two machines' clocks: a beat's value only has to stop changing. An observer that first
    sees a run counts it live, and takes it over once it has watched the same beat for the lease's length of its own
    time, whatever time the beat names; a beat that changes starts the count again."""
    from bench.tracking.lease import Watch

    now = [0.0]
    watch = Watch(clock=lambda: now[0])
    for beat in ("0", f"{time.time() + 86400:.0f}"):  # a holder's clock a day behind, or a day ahead
        run = f"run-{beat}"
        assert not watch.expired(run, beat)  # first seen: live
        now[0] += schema.LEASE_S - 1
        assert not watch.expired(run, beat)
        now[0] += 1
        assert watch.expired(run, beat)
    assert not watch.expired("run-0", "1")  # it beat again: live, and the count starts over
    now[0] += schema.LEASE_S - 1
    assert not watch.expired("run-0", "1")


def test_beats_fail_fast_and_a_holder_that_cannot_beat_lets_the_cell_go(mlflow_server, monkeypatch):
    """The beat goes to the session's real tracking server over REST (read the run, then write the heartbeat); to an
    unreachable server it fails at once (one attempt, not MLflow's minutes of retries), and once no beat got through
    for RENEW_S (< LEASE_S, so the holder stops before anyone may take over) the lease is lost, saying why."""
    from bench.tracking import lease as lease_module
    from tests.components import free_port

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"beats-{time.time_ns()}")
    run = client.create_run(experiment, tags={schema.HOLDER: "claim-a"})
    lease = lease_module.Lease(client, run.info.run_id, "claim-a", interval=3600)
    lease.beat()
    beat = client.get_run(run.info.run_id).data.tags[schema.HEARTBEAT]
    assert abs(float(beat) - time.time()) < 60 and lease.lost() is None and lease.unreachable is None
    client.set_tag(run.info.run_id, schema.HOLDER, "claim-b")
    lease.beat()
    assert lease.lost() == "another process took the cell over"

    assert lease_module.RENEW_S < schema.LEASE_S
    away = lease_module.Lease(mlflow.MlflowClient(f"http://127.0.0.1:{free_port()}"), "r", "claim-a", interval=3600)
    started = time.monotonic()
    away.beat()
    assert time.monotonic() - started < lease_module.BEAT_TIMEOUT_S and away.unreachable
    assert away.lost() is None  # not yet: the last beat that got through was moments ago
    clock = time.monotonic() + lease_module.RENEW_S + 1
    monkeypatch.setattr(lease_module.time, "monotonic", lambda: clock)
    assert away.lost().startswith(f"no heartbeat got through for {lease_module.RENEW_S + 1:.0f} s (the last attempt:")


def test_a_claim_is_won_once_whatever_the_interleaving(tmp_path):
    """The claim is a name the store keeps unique (an experiment per generation of a cell's holders), so exactly
    one process gets each generation however their calls interleave: two that read the same latest generation and
    claim the next, a slow reopener, start times out of order. A claim whose run is not open yet makes others wait
    until this observer has watched it for the lease's length (its claimant died before opening it); a holder whose
    generation is no longer the latest loses its lease at its next beat, as does a paused holder whose run another
    claim reopened."""
    from bench.tracking import lease as lease_module

    tracker = tracking.Tracker(tracking.default_uri(tmp_path), "quick", tmp_path / "artifacts")
    other = tracking.Tracker(tracking.default_uri(tmp_path), "quick", tmp_path / "artifacts")  # a second bench run
    now = [0.0]
    other.watch = lease_module.Watch(clock=lambda: now[0])
    key = "cell-1"
    seen_a, seen_b = tracker.latest_claim(key), other.latest_claim(key)  # both read before either claims
    a, b = lease_module.holder_id(seen_a + 1), lease_module.holder_id(seen_b + 1)
    assert (seen_a, seen_b) == (0, 0)
    assert other.claim(key, seen_b + 1, b) is True and tracker.claim(key, seen_a + 1, a) is False
    assert tracker.claim(key, 1, a) is False  # and never later, however late the claim arrives
    assert tracker.latest_claim(key) == 1 and lease_module.generation_of(b) == 1

    # b has claimed, not yet opened its run: a second observer waits, until it has watched that for the lease
    assert other.claim_pending(key, 1) and other.claim_pending(key, 1)
    now[0] += schema.LEASE_S
    assert not other.claim_pending(key, 1)  # b died between its claim and its run: the next claim may go ahead
    run = tracker.start_run("cell", {schema.CELL: key, schema.HOLDER: b})
    assert not tracker.claim_pending(key, 1)  # its run is open

    with run.heartbeat(b, interval=3600) as lease:
        assert lease.lost() is None
        c = lease_module.holder_id(2)
        assert tracker.claim(key, 2, c)  # a later takeover claimed generation 2
        lease.beat()
        assert lease.lost() == "another process claimed the cell after this one (claim 2, this 1)"

    run.set_tags({schema.HOLDER: c})
    with run.heartbeat(c, interval=3600) as lease:
        assert lease.lost() is None  # the latest claim holds
        d = lease_module.holder_id(3)
        assert tracker.claim(key, 3, d)
        tracker.release(run.run_id, "its holder stopped renewing the cell's lease")  # a taker, while c was paused
        tracker.reopen_run(run.run_id, key, d)
        lease.beat()  # c wakes up
        assert lease.lost() in ("another process took the cell over",
                                "another process claimed the cell after this one (claim 3, this 2)")  # fmt: skip


def test_the_beat_authenticates_as_mlflows_client_does(monkeypatch):
    """The fail-fast beat goes to the REST API by requests, with what MLflow's documented environment variables
    give its own client: a bearer token over basic auth, the server's CA bundle or no TLS check, a client cert."""
    from bench.tracking.lease import rest_auth

    for name in ("TOKEN", "USERNAME", "PASSWORD", "INSECURE_TLS", "SERVER_CERT_PATH", "CLIENT_CERT_PATH"):
        monkeypatch.delenv(f"MLFLOW_TRACKING_{name}", raising=False)
    assert rest_auth() == {}
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", "/ca.pem")
    assert rest_auth() == {"auth": ("ada", "secret"), "verify": "/ca.pem"}
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k")
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", "/me.pem")
    assert rest_auth() == {"headers": {"Authorization": "Bearer t0k"}, "verify": False, "cert": "/me.pem"}
