"""Who trains a cell: `open_cell` skips a finished cell, leaves one that another process holds to it (ELSEWHERE),
takes over one whose holder stopped renewing its lease, and otherwise opens (or reopens) the cell's run and claims
it (`_claim`). The lease itself (the heartbeat tag, when a holder counts as live) is the tracking store's
(bench.tracking.runs)."""

from __future__ import annotations

import time

import baselines
from bench import schema, tracking
from bench.run import checkpoints
from bench.run.cell import ELSEWHERE, UNREACHABLE, CellContext, CellJob, Outcome, SuiteRun
from bench.run.matrix import Cell
from bench.run.record import open_run
from bench.tracking.lease import generation_of, holder_id


def open_cell(cell: Cell, suite: SuiteRun, ctx: CellContext, label: str = "") -> Outcome | CellJob:
    """SKIPPED when a FINISHED run of the same key exists; ELSEWHERE when another process holds the cell's lease (a
    RUNNING run of it with a live heartbeat) or has just claimed it; otherwise the cell claimed by this process and
    its run, ready for an executor: its interrupted attempt's run reopened (from the local checkpoint, or from the
    one kept in a remote tracking store), or a new one under the suite's parent run. A run whose holder stopped
    renewing its lease (a dead node) is taken over. The claim is atomic: each takeover claims the cell's next
    generation (bench.tracking.lease: claims), which exactly one process gets however they interleave; the others
    wait for it, and a holder whose generation is no longer the latest stops at its next beat."""
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
    generation = tracker.latest_claim(key)
    if generation and tracker.claim_pending(key, generation):
        return _claimed_elsewhere(cell, tracker, key, generation, ctx, label)
    for stale in holders:
        ctx.echo(f"{label} {cell.name}: its holder stopped renewing its lease ({stale.describe()}); taking it over")
        tracker.release(stale.run_id, f"its holder ({stale.describe()}) stopped renewing the cell's lease")
    holder = holder_id(generation + 1)  # this claim: a process that lost the cell to another sees another id on the run
    if not tracker.claim(key, generation + 1, holder):
        return _claimed_elsewhere(cell, tracker, key, generation + 1, ctx, label)
    checkpoint, where = checkpoints.checkpoint_path(ctx.results, key), None
    if tracking.is_remote(ctx.uri):  # the newest copy wins: this node's, or the store's
        try:
            if source := tracker.shared_checkpoint(key, checkpoint, newer_than=checkpoints.step_of(checkpoint)):
                where = f"run {source}'s {schema.RESUME_ARTIFACT} in the tracking store"
                ctx.echo(f"{label} {cell.name}: its checkpoint came from the tracking store")
        except tracking.TrackingError as e:
            ctx.echo(f"{label} {cell.name}: warning: {e}")
    if checkpoint.is_file() and (why := checkpoints.set_aside_if_unusable(checkpoint, where or str(checkpoint))):
        ctx.echo(f"{label} {cell.name}: warning: {why}; the cell starts from step 0")
    ctx.echo(f"{label} {cell.name}: training {cell.train.steps} steps ...")
    previous = (checkpoints.interrupted_attempt(ctx.results, key) or {}).get("run_id")
    run = tracker.reopen_run(previous, key, holder) if previous else None
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
            holder=holder,
        )
    return CellJob(cell, key, run, label, holder)


CLAIM_SETTLE_S = 5.0  # how long a process that lost a claim looks for the winner's run before waiting without it


def _claimed_elsewhere(cell: Cell, tracker, key: str, generation: int, ctx: CellContext, label: str) -> Outcome:
    """ELSEWHERE for a cell another process claimed (generation `generation`): the winner's run to wait for, once it
    shows (a moment after its claim); without one yet, the suite looks again while it waits."""
    deadline = time.monotonic() + CLAIM_SETTLE_S
    while True:
        live = [h for h in tracker.holders(key) if h.live and generation_of(h.holder) >= generation]
        if live or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    what = live[0].describe() if live else f"claim {generation}, its run not open yet"
    ctx.echo(f"{label} {cell.name}: another bench run claimed it ({what}); waiting for it after the others")
    return Outcome(cell, ELSEWHERE, live[0].run_id if live else "", error=what)


WAIT_POLL_S = 5.0  # how often a suite looks at cells another process is training


def wait_elsewhere(outcomes: list[Outcome], suite_run: SuiteRun, run_here, echo) -> list[Outcome]:
    """Cells another process was training when this suite reached them (ELSEWHERE): waited for, so that this
    suite's report holds them too. One the other process finished counts as SKIPPED here; one it left unfinished
    (FAILED, KILLED, or its lease expired: the node died) is run here, resumed from its checkpoint."""
    outcomes = list(outcomes)
    pending = [i for i, o in enumerate(outcomes) if o.status == ELSEWHERE]
    said = 0.0
    while pending:
        if time.monotonic() - said > 60:
            echo(
                f"waiting for {len(pending)} cell(s) another bench run is training (a holder whose heartbeat stays "
                f"unchanged for {schema.LEASE_S:.0f} s is taken over) ..."
            )
            said = time.monotonic()
        time.sleep(WAIT_POLL_S)
        for i in list(pending):
            o = outcomes[i]
            if not o.run_id:  # claimed by another process that had not opened its run: look at the cell again
                pending.remove(i)
                outcomes[i] = run_here((i + 1, o.cell))
                if outcomes[i].status == ELSEWHERE:
                    pending.append(i)
                continue
            holder = suite_run.tracker.holder(o.run_id)
            if holder is not None and holder.live:
                continue
            status = suite_run.tracker.status(o.run_id)
            pending.remove(i)
            if status == "FINISHED":
                echo(f"{o.cell.name}: FINISHED by another bench run (run {o.run_id})")
                outcomes[i] = Outcome(o.cell, "SKIPPED", o.run_id)
            else:  # left unfinished: run it here, from its checkpoint
                outcomes[i] = run_here((i + 1, o.cell))
                if outcomes[i].status == ELSEWHERE:
                    pending.append(i)
    return outcomes


class CellRunner:
    """One numbered cell of a suite, run: claimed (`open_cell`), then held by its lease from the claim while the
    executor queues, starts and runs it. Once the tracking server stops answering (longer than MLflow's retries
    wait), no later cell calls it: `outage` says so, and `stop_if_unreachable` ends the suite with one line."""

    def __init__(self, total: int, suite_run: SuiteRun, ctx: CellContext, executor):
        self.total, self.suite_run, self.ctx, self.executor = total, suite_run, ctx, executor
        self.outage: list[str] = []

    def __call__(self, numbered: tuple[int, Cell]) -> Outcome:
        index, cell = numbered
        if self.outage:
            return Outcome(cell, UNREACHABLE, "", self.outage[0])
        try:
            opened = open_cell(cell, self.suite_run, self.ctx, f"[{index}/{self.total}]")
            if isinstance(opened, Outcome):
                return opened
            with opened.run.heartbeat(opened.holder):  # held from the claim: queued, starting, or running
                outcome = self.executor.run(opened, self.ctx)
        except Exception as e:
            if tracking.answers(self.ctx.uri):
                raise
            outcome = Outcome(cell, UNREACHABLE, "", f"{type(e).__name__}: {str(e)[:300]}")
        if outcome.status == UNREACHABLE:  # the cell's line said the error in full
            self.outage.append(f"while {cell.name} ran: {outcome.error.split(':')[0]} after MLflow's retries")
        return outcome

    def stop_if_unreachable(self, outcomes: list[Outcome]) -> None:
        """Nothing more can be recorded: the next `bench run` closes this one's runs and resumes the cells."""
        if self.outage:
            raise tracking.StoreUnreachable(
                f"the tracking server at {self.ctx.uri} stopped answering ({self.outage[0]}); "
                f"{sum(o.status == 'FINISHED' for o in outcomes)} cell(s) finished before it, and each unfinished "
                f"cell's checkpoint is kept under {self.ctx.results / 'checkpoints'}: run the same command once "
                "the server is back to resume them"
            )
