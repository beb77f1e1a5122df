"""Who trains a cell: `open_cell` skips a finished cell, leaves one that another process holds to it (ELSEWHERE),
takes over one whose holder stopped renewing its lease, and otherwise opens (or reopens) the cell's run and claims
it (`_claim`). The lease itself (the heartbeat tag, when a holder counts as live) is the tracking store's
(bench.tracking.runs)."""

from __future__ import annotations

import os
import socket
import time
import uuid

import baselines
from bench import schema, tracking
from bench.run import checkpoints
from bench.run.cell import CellContext, CellJob, Outcome, SuiteRun
from bench.run.matrix import Cell
from bench.run.record import open_run


def open_cell(cell: Cell, suite: SuiteRun, ctx: CellContext, label: str = "") -> Outcome | CellJob:
    """SKIPPED when a FINISHED run of the same key exists; ELSEWHERE when another process holds the cell's lease (a
    RUNNING run of it with a live heartbeat); otherwise the cell's run, ready for an executor: its interrupted
    attempt's run reopened (from the local checkpoint, or from the one kept in a remote tracking store), or a new
    one under the suite's parent run. A run whose holder stopped renewing its lease (a dead node) is taken over.
    Of two processes opening one cell at once, the one whose run started first keeps it (`_claim`)."""
    dataset = ctx.datasets[cell.dataset]
    key = cell.key(dataset.digest)
    tracker = suite.tracker
    if key not in suite.finished:  # finished since the suite started (by another bench run)?
        suite.finished.update(tracker.finished_cells(key))
    if key in suite.finished:
        ctx.echo(f"{label} {cell.name}: already FINISHED (run {suite.finished[key]}), skipped")
        return Outcome(cell, "SKIPPED", suite.finished[key])
    holders = tracker.holders(key)
    live = [h for h in holders if h.live]
    if live:
        ctx.echo(f"{label} {cell.name}: running elsewhere ({live[0].describe()}); waiting for it after the others")
        return Outcome(cell, ELSEWHERE, live[0].run_id, error=live[0].describe())
    for stale in holders:
        ctx.echo(f"{label} {cell.name}: its holder stopped renewing its lease ({stale.describe()}); taking it over")
        tracker.release(stale.run_id, f"its holder ({stale.describe()}) stopped renewing the cell's lease")
    checkpoint, where = checkpoints.checkpoint_path(ctx.results, key), None
    if not checkpoint.is_file() and tracking.is_remote(ctx.uri):
        if source := tracker.shared_checkpoint(key, checkpoint):
            where = f"run {source}'s {schema.RESUME_ARTIFACT} in the tracking store"
            ctx.echo(f"{label} {cell.name}: its checkpoint came from the tracking store")
    if checkpoint.is_file() and (why := checkpoints.set_aside_if_unusable(checkpoint, where or str(checkpoint))):
        ctx.echo(f"{label} {cell.name}: warning: {why}; the cell starts from step 0")
    ctx.echo(f"{label} {cell.name}: training {cell.train.steps} steps ...")
    previous = (checkpoints.interrupted_attempt(ctx.results, key) or {}).get("run_id")
    run = tracker.reopen_run(previous, key) if previous else None
    if run is not None:
        ctx.echo(f"{label} {cell.name}: continuing its interrupted run {run.run_id}")
    else:
        run = open_run(
            tracker,
            cell.name,
            suite=cell.suite,
            model=cell.model,
            family=baselines.get(cell.model, cell.model_source).family,
            dataset=dataset,
            seed=cell.seed,
            key=key,
            variant=cell.key(dataset.digest, with_seed=False),
            parent=suite.parent,
        )
    rival = _claim(tracker, key, run, reopened=run.run_id == previous)
    if rival is not None:
        ctx.echo(f"{label} {cell.name}: another bench run took it at the same moment ({rival.describe()})")
        return Outcome(cell, ELSEWHERE, rival.run_id, error=rival.describe())
    return CellJob(cell, key, run, label)


ELSEWHERE = "ELSEWHERE"  # an Outcome's status while another process trains the cell (run_suite waits for it)


def _claim(tracker: tracking.Tracker, key: str, run: tracking.Run, reopened: bool):
    """One cell, one trainer: of the cell's live runs the earliest (start time, then id) keeps the cell. A run this
    process created and lost is deleted; returns the rival that holds the cell, or None when this run does. A
    reopened run is claimed with a token tag, read back after a moment (two processes reopening the same run)."""
    rivals = [h for h in tracker.holders(key) if h.live]
    first = rivals[0] if rivals else None
    if first is not None and first.run_id != run.run_id:
        if not reopened:
            tracker.withdraw(run.run_id)
        return first
    if reopened:
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        run.set_tags({schema.LEASE_TOKEN: token})
        time.sleep(1.0)
        if tracker.tag(run.run_id, schema.LEASE_TOKEN) != token:
            return next((h for h in tracker.holders(key) if h.run_id == run.run_id), first)
    return None
