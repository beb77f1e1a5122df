"""Who holds a cell's run: the owner tags a process writes (host, PID and the boot and PID namespace the PID is
valid in), the heartbeat that keeps its lease, and whether a RUNNING run's holder is still live."""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench import schema


def holder_of(run, watch: Watch) -> Holder:
    """The holder of a RUNNING run and whether its lease is live, judged by `watch` (this observer's own clock), and
    on this host by whether its process exists."""
    tags = run.data.tags
    live = not watch.expired(run.info.run_id, tags.get(schema.HEARTBEAT) or f"start {run.info.start_time}")
    host, pid = tags.get(schema.HOST, "?"), tags.get(schema.PID, "?")
    if live and pid_checkable_here(tags) and not pid_alive(int(pid)):
        live = False
    return Holder(run.info.run_id, host, pid, run.info.start_time, live, tags.get(schema.HOLDER, ""))


class Watch:
    """An observer's view of other processes' leases, by its own monotonic clock only: a holder's heartbeat tag
    that this process has seen unchanged for schema.LEASE_S seconds has expired. No two machines' clocks are
    compared (a holder's clock may be minutes off), so a run first seen now counts as live until it has been watched
    for the lease's length: a cell whose node died is taken over at most LEASE_S after a `bench run` first looks at
    it (at once on this host when its process no longer exists)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._seen: dict[str, tuple[str, float]] = {}  # run id → (its beat, when this process first saw that beat)

    def expired(self, run_id: str, beat: str) -> bool:
        now = self.clock()
        seen = self._seen.get(run_id)
        if seen is None or seen[0] != beat:
            self._seen[run_id] = (beat, now)
            return False
        return now - seen[1] >= schema.LEASE_S


@dataclass(frozen=True)
class Holder:
    """A RUNNING run of a cell and the process holding it."""

    run_id: str
    host: str
    pid: str
    started: int  # the run's start time, ms
    live: bool
    holder: str = ""  # the claim that holds it (schema.HOLDER: generation, then a random id)

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.started / 1000))
        return f"host {self.host}, pid {self.pid}, since {since}, run {self.run_id}"


def owner_tags(pid: int) -> dict[str, str]:
    """Which process on which host runs a run: how a later `bench run` recognises runs orphaned by a kill."""
    return {schema.HOST: socket.gethostname(), schema.PID: str(pid), schema.PROCESS_SPACE: process_space()}


@functools.cache  # the same for the whole life of a process
def process_space() -> str:
    """The machine boot and PID namespace this process's PIDs mean something in. Two containers with host
    networking share a hostname but not their PIDs: a PID is looked up only where this matches."""
    parts = []
    for path, read in (("/proc/sys/kernel/random/boot_id", lambda p: Path(p).read_text().strip()),
                       ("/proc/self/ns/pid", os.readlink)):  # fmt: skip
        try:
            parts.append(read(path))
        except OSError:
            parts.append("?")
    return "/".join(parts)


def pid_checkable_here(tags: dict) -> bool:
    """Whether the run's owning PID can be looked up from this process: the same host, boot and PID namespace. A
    run without that record (another machine, a container, an older genbench) is judged by its heartbeat only."""
    return (
        tags.get(schema.HOST) == socket.gethostname()
        and tags.get(schema.PROCESS_SPACE) == process_space()
        and tags.get(schema.PID, "").isdigit()
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# A cell's claims: an experiment name per generation of holders, created by the one process that claims it (the
# store keeps experiment names unique in every backend, so exactly one create of a name succeeds) and deleted at
# once (hidden from the UI; the name stays taken until `mlflow gc`). The highest generation holds the cell.
CLAIMS = "genbench-claims"


def claim_prefix(experiment_id: str, cell_key: str) -> str:
    return f"{CLAIMS}/{experiment_id}/{cell_key}/"


def latest_claim(client, experiment_id: str, cell_key: str) -> int:
    """The highest generation claimed of a cell (0: never claimed)."""
    from mlflow.entities import ViewType

    prefix = claim_prefix(experiment_id, cell_key)
    found = client.search_experiments(
        view_type=ViewType.ALL, max_results=1, filter_string=f"name LIKE '{prefix}%'", order_by=["name DESC"]
    )
    return int(found[0].name.rsplit("/", 1)[1]) if found else 0


def take_claim(client, experiment_id: str, cell_key: str, generation: int, holder: str) -> bool:
    """Claim generation `generation` of a cell for `holder`: True for the one process whose claim of that name was
    first; False for every other."""
    from mlflow.exceptions import MlflowException

    try:
        claimed = client.create_experiment(f"{claim_prefix(experiment_id, cell_key)}{generation:06d}",
                                           tags={schema.HOLDER: holder})  # fmt: skip
    except MlflowException as e:
        if e.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    client.delete_experiment(claimed)
    return True


def holder_id(generation: int) -> str:
    """A claim's holder id (schema.HOLDER): its generation, then a random part no other process shares."""
    import uuid

    return f"{generation}:{uuid.uuid4().hex}"


def generation_of(holder: str | None) -> int:
    head = (holder or "").split(":", 1)[0]
    return int(head) if head.isdigit() else 0


class LeaseLost(RuntimeError):
    """This process no longer holds the cell: another process took it over, or no beat got through for the lease's
    length (a paused process, an unreachable store). The holder stops without writing anything more to the run."""


# The holder stops itself once no beat got through for RENEW_S, well before an observer may take the cell over
# (LEASE_S after it first saw the last beat): the margin covers a training step or checkpoint in progress.
RENEW_S = schema.LEASE_S - 2 * schema.HEARTBEAT_S
BEAT_TIMEOUT_S = 10.0  # one beat's calls to a tracking server: no retries, so a beat never sleeps past the lease


def rest_auth() -> dict:
    """The request options MLflow's client takes from its documented environment variables: a bearer token
    (MLFLOW_TRACKING_TOKEN) or basic auth (MLFLOW_TRACKING_USERNAME / _PASSWORD), the server's CA bundle
    (MLFLOW_TRACKING_SERVER_CERT_PATH) or no TLS check (MLFLOW_TRACKING_INSECURE_TLS=true), a client certificate
    (MLFLOW_TRACKING_CLIENT_CERT_PATH)."""
    env = os.environ
    out: dict = {}
    if env.get("MLFLOW_TRACKING_TOKEN"):
        out["headers"] = {"Authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"}
    elif env.get("MLFLOW_TRACKING_USERNAME") or env.get("MLFLOW_TRACKING_PASSWORD"):
        out["auth"] = (env.get("MLFLOW_TRACKING_USERNAME", ""), env.get("MLFLOW_TRACKING_PASSWORD", ""))
    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        out["verify"] = False
    elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        out["verify"] = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if env.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        out["cert"] = env["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return out


class Beats:
    """The two calls a beat makes: read the run (status, tags) and write the heartbeat tag. To a tracking server
    they go straight to its documented REST API (requests: one attempt, a BEAT_TIMEOUT_S timeout; MLflow's client
    retries for minutes, which would hide a lost lease), authenticated as MLflow's client is, by its environment
    variables (`rest_auth`); to a local store through the client."""

    def __init__(self, client):
        self.client = client
        uri = client.tracking_uri
        self.base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else None
        self.creds = self.base  # None for a local store: the client's own calls

    def _call(self, endpoint: str, method: str, **kwargs) -> dict:
        import requests

        response = requests.request(
            method, f"{self.base}/api/2.0/mlflow/{endpoint}", timeout=BEAT_TIMEOUT_S, **rest_auth(), **kwargs
        )
        response.raise_for_status()
        return response.json()

    def read(self, run_id: str) -> tuple[str, dict[str, str], str]:
        """The run's status, tags and experiment id."""
        if self.creds is None:
            run = self.client.get_run(run_id)
            return run.info.status, run.data.tags, run.info.experiment_id
        run = self._call("runs/get", "GET", params={"run_id": run_id})["run"]
        tags = {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}
        return run["info"]["status"], tags, run["info"]["experiment_id"]

    def latest_claim(self, experiment_id: str, cell_key: str) -> int:
        if self.creds is None:
            return latest_claim(self.client, experiment_id, cell_key)
        prefix = claim_prefix(experiment_id, cell_key)
        body = {"max_results": 1, "filter": f"name LIKE '{prefix}%'", "order_by": ["name DESC"], "view_type": "ALL"}
        found = self._call("experiments/search", "POST", json=body).get("experiments", [])
        return int(found[0]["name"].rsplit("/", 1)[1]) if found else 0

    def write(self, run_id: str, value: str) -> None:
        if self.creds is None:
            self.client.set_tag(run_id, schema.HEARTBEAT, value)
        else:
            self._call("runs/set-tag", "POST", json={"run_id": run_id, "key": schema.HEARTBEAT, "value": value})


class Lease:
    """The holder's side of a cell's lease, from the claim to the cell's end: a background thread beats
    (schema.HEARTBEAT) every `interval` seconds, and at each beat first reads the run back (Beats: one attempt,
    a short timeout). The lease is lost when the run is no longer RUNNING or names another holder (schema.HOLDER:
    the random id of the process that claimed it last), or when no beat has got through for RENEW_S seconds by this
    process's own monotonic clock (a SIGSTOPped process, a suspended machine, an unreachable store): an observer may
    take the cell over LEASE_S after it last saw the beat change. `check()` raises LeaseLost; the training loop calls
    it at every step, and the cell before every write that matters (the final models, FINISHED)."""

    def __init__(self, client, run_id: str, holder: str, interval: float = schema.HEARTBEAT_S):
        import threading

        self.client, self.run_id, self.holder, self.interval = client, run_id, holder, interval
        self.renew_s = RENEW_S
        self.beats = Beats(client)
        self.reason: str | None = None
        self.unreachable: str | None = None  # the last failed beat's error, while beats fail
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-heartbeat", daemon=True)

    def beat(self) -> None:
        """Read the run back, then beat if it is still this holder's; a failed call waits for the next beat."""
        started = time.monotonic()  # the beat lands after this: observers count the lease from no earlier
        try:
            status, tags, experiment_id = self.beats.read(self.run_id)
            if status != "RUNNING":
                self.reason = f"its run was marked {status} by another process"
                return
            other = tags.get(schema.HOLDER)
            if self.holder and other and other != self.holder:
                self.reason = "another process took the cell over"
                return
            mine = generation_of(self.holder)
            if mine and tags.get(schema.CELL):
                latest = self.beats.latest_claim(experiment_id, tags[schema.CELL])
                if latest > mine:
                    self.reason = f"another process claimed the cell after this one (claim {latest}, this {mine})"
                    return
            self.beats.write(self.run_id, f"{time.time():.0f}")
            self._last_ok, self.unreachable = started, None
        except Exception as e:  # the store away: the next beat tries again, and RENEW_S bounds how long
            self.unreachable = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]

    def lost(self) -> str | None:
        """Why this process no longer holds the cell; None while it does."""
        if self.reason is None and time.monotonic() - self._last_ok > self.renew_s:
            why = f" (the last attempt: {self.unreachable})" if self.unreachable else ""
            self.reason = (
                f"no heartbeat got through for {time.monotonic() - self._last_ok:.0f} s{why}: after "
                f"{self.renew_s:.0f} s its holder lets the cell go, since another process may take it over"
            )
        return self.reason

    def check(self) -> None:
        if (reason := self.lost()) is not None:
            raise LeaseLost(reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval) and self.reason is None:
            self.beat()

    def __enter__(self) -> Lease:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
