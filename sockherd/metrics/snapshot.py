"""The public snapshot: frozen dataclasses that describe a supervisor and its servers.

Theory of operation
-------------------
Whoever reports on a running sockherd -- the Prometheus collector, `sockherd ctl
status`, a status page -- reads one `SupervisorSnapshot` and nothing else: no
module reaches into another's private attributes to find a figure.  The
supervisor (`supervisor.arbiter.Arbiter.snapshot()`) builds one on demand from
where each figure lives (the scoreboard, the pools, the servers' own counters);
a lone server that serves metrics without a supervisor gets one from
`lone_server_snapshot()`.  Snapshots are plain values: cheap to build at a scrape,
safe to keep, and `as_dict()` turns one into the JSON of `ctl status --json`.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from ..server.base_server import BaseServer
from ..server.listen_queue import listen_queue
from ..server.request_stats import DURATION_BUCKETS, OUTCOMES

SUPERVISOR_STATES = ("starting", "running", "reloading", "upgrading", "draining", "stopped")


@dataclasses.dataclass(frozen=True)
class WorkerSnapshot:
    """One live worker of a pool."""

    slot: int
    pid: int
    generation: int
    state: str  # starting, idle, busy, stopping, dead
    requests: int
    errors: int
    age: float  # seconds since it was forked
    heartbeat_age: float  # seconds since it last proved it is alive
    started_at: float  # Unix time
    threads: int = 1  # requests it can serve at once (its thread pool)
    busy_threads: int = 0  # threads serving a request now
    connections: int = 0  # requests in hand: busy, or (threads) kept alive waiting for the client
    # The live record (busy workers): what the request is, whose, for how long.
    request: str | None = None  # its description, or the peer when it has none
    peer: str | None = None
    request_elapsed: float | None = None  # seconds since the request began
    # Read from /proc at status time (cached up to 1 s); None where unavailable.
    cpu_seconds: float | None = None
    rss: int | None = None
    pss: int | None = None
    uss: int | None = None


@dataclasses.dataclass(frozen=True)
class ExitRecord:
    """The last exit of one scoreboard slot's worker."""

    slot: int
    pid: int
    cause: str  # one of EXIT_CAUSES
    status: str  # "exit N" or "signal NAME"
    at: float  # Unix time it was reaped
    request: str | None  # the request it held, if any
    peer: str | None
    request_elapsed: float | None  # how long it had served that request


EXIT_CAUSES = ("exit", "signal", "timeout", "oom", "recycled", "stopped", "boot_failure")
"""Why a worker ended, as `ExitRecord.cause` and the `cause` label say: a crash with an
exit code or a signal, killed for worker_timeout, killed by the kernel OOM killer,
recycled (max_requests, max_worker_memory), told to stop, died while booting."""


@dataclasses.dataclass(frozen=True)
class SlotFigures:
    """Requests served from one scoreboard slot over every worker it ever held."""

    slot: int
    by_outcome: Mapping[str, int]  # ok, error, timeout, aborted
    buckets: tuple[int, ...]  # non-cumulative, one per DURATION_BUCKETS bound, then +Inf
    duration_sum: float


@dataclasses.dataclass(frozen=True)
class PoolSnapshot:
    """A prefork server's pool of workers."""

    handoff: str
    desired: int
    generation: int
    workers: tuple[WorkerSnapshot, ...]
    slots: tuple[SlotFigures, ...]
    restarts: Mapping[str, int]  # by reason: crashed, timeout, recycled, stopped, boot_failure
    exits: Mapping[str, int]  # by "exit N" / "signal NAME"
    fork_failures: Mapping[str, int]  # by errno name
    dead_slots: tuple[tuple[int, int], ...] = ()  # (slot, last pid) of reaped workers' slots
    last_exits: tuple[ExitRecord, ...] = ()  # per slot, the last worker's exit
    exit_causes: Mapping[str, int] = dataclasses.field(default_factory=dict)  # by EXIT_CAUSES
    slow_requests: int = 0  # requests that ran past slow_request_timeout
    accepted: int = 0  # requests taken by every worker that ever ran in this pool
    max_workers_reached: int = 0  # episodes of every worker busy at once
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # the live workers' memory summed by kind (pss, uss, shared, rss; bytes); {}: no /proc
    memory: Mapping[str, int] = dataclasses.field(default_factory=dict)
    shared_ratio: float | None = None  # shared / rss of the workers
    autoscale_decisions: Mapping[str, int] = dataclasses.field(default_factory=dict)  # by reason

    @property
    def busy(self) -> int:
        """Workers serving a request now."""
        return sum(1 for worker in self.workers if worker.state == "busy")

    @property
    def idle(self) -> int:
        """Workers waiting for a request."""
        return sum(1 for worker in self.workers if worker.state == "idle")

    @property
    def in_progress(self) -> int:
        """Requests in hand now: busy sync workers' requests, threaded workers'
        connections (those waiting for their client's next request included)."""
        return sum(worker.connections for worker in self.workers)

    @property
    def thread_counts(self) -> tuple[int, int]:
        """(busy, idle) request threads of the live workers (a sync worker is one thread)."""
        serving = [w for w in self.workers if w.state in ("idle", "busy")]
        busy = sum(worker.busy_threads for worker in serving)
        return busy, sum(worker.threads for worker in serving) - busy

    @property
    def requests_total(self) -> int:
        """Requests finished by every worker that ever ran in this pool."""
        return sum(sum(slot.by_outcome.values()) for slot in self.slots)


@dataclasses.dataclass(frozen=True)
class ServerSnapshot:
    """One listening server and how it serves."""

    label: str  # the metrics `server` label
    mode: str  # sync, thread, fork, prefork
    requests: Mapping[str, int]  # finished requests by outcome (all of them in prefork)
    buckets: tuple[int, ...]
    duration_sum: float
    in_progress: int
    accept_errors: Mapping[str, int]  # failed accepts by errno name
    fork_failures: Mapping[str, int]  # request children that could not be forked, by errno
    child_exits: Mapping[str, int] | None  # ForkingMixIn: reaped request children
    max_children: int | None
    listen_queue: tuple[int, int] | None  # (waiting, backlog), Linux TCP only
    pool: PoolSnapshot | None


@dataclasses.dataclass(frozen=True)
class SupervisorSnapshot:
    """The whole process: its state, its servers, and what the parent itself did."""

    state: str  # one of SUPERVISOR_STATES; "running" for a lone server
    pid: int
    uptime: float
    drain_seconds_left: float | None  # while draining: seconds to the graceful deadline
    servers: tuple[ServerSnapshot, ...]
    orphans_reaped: int
    supervised: bool  # False for a lone server serving its own metrics
    upgrades: Mapping[str, int] = dataclasses.field(default_factory=dict)  # by outcome
    images: int = 1  # programs this process has run: 1 + in-place upgrades that exec'd
    last_upgrade: Mapping[str, Any] | None = None  # id, outcome (None: in progress), reason

    @property
    def in_progress(self) -> int:
        """Requests in progress over every server."""
        return sum(server.in_progress for server in self.servers)

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (`ctl status --json`)."""
        data = dataclasses.asdict(self)
        data["in_progress"] = self.in_progress
        return data


def server_label(server: BaseServer) -> str:
    """The `server` label: `metrics_name` if set, else the listening address."""
    name = getattr(server, "metrics_name", None)
    if name:
        return str(name)
    address = server.server_address
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return address.decode() if isinstance(address, bytes) else str(address)


def server_mode(server: BaseServer) -> str:
    """How a server serves, from its class: prefork, fork, thread or sync."""
    for mode, prefix in (("prefork", "Prefork"), ("fork", "Forking"), ("thread", "Threading")):
        if any(cls.__name__.startswith(prefix) for cls in type(server).__mro__):
            return mode
    return "sync"


def server_snapshot(
    server: BaseServer,
    pool: PoolSnapshot | None = None,
    extra_accept_errors: Mapping[str, int] | None = None,
) -> ServerSnapshot:
    """What `server` itself knows, plus its pool's snapshot when a supervisor has one.

    `extra_accept_errors`: failed accepts of the process's other listeners (the metrics
    endpoint, the control socket), reported with this server's."""
    stats = server.request_stats
    if pool is not None:
        requests: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        buckets = [0] * (len(DURATION_BUCKETS) + 1)
        duration_sum = 0.0
        for slot in pool.slots:
            for outcome, value in slot.by_outcome.items():
                requests[outcome] += value
            buckets = [a + b for a, b in zip(buckets, slot.buckets, strict=True)]
            duration_sum += slot.duration_sum
        in_progress = pool.in_progress
    else:
        requests = {outcome: stats.by_outcome[outcome] for outcome in OUTCOMES}
        buckets, duration_sum = list(stats.buckets), stats.duration_sum
        in_progress = requests_in_progress(server)
    children = getattr(server, "child_exit_counts", None)
    sock = getattr(server, "socket", None)
    accept_errors = collections.Counter(server.accept_errors)
    accept_errors.update(extra_accept_errors or {})
    return ServerSnapshot(
        label=server_label(server),
        mode=server_mode(server),
        requests=requests,
        buckets=tuple(buckets),
        duration_sum=duration_sum,
        in_progress=in_progress,
        accept_errors=dict(accept_errors),
        fork_failures=dict(getattr(server, "fork_errors", {})),
        child_exits=dict(children) if children is not None else None,
        max_children=getattr(server, "max_children", None) if children is not None else None,
        listen_queue=_listen_queue(sock),
        pool=pool,
    )


def requests_in_progress(server: BaseServer) -> int:
    """Requests a non-prefork server is serving now: forked children, live threads, or
    the one a sync server is inside of."""
    children = getattr(server, "active_children", None)
    if children is not None:
        return len(children)
    return int(server.request_stats.in_flight)


def lone_server_snapshot(
    server: BaseServer, started: float, extra_accept_errors: Mapping[str, int]
) -> SupervisorSnapshot:
    """The snapshot of a server that serves metrics without a supervisor (and of the
    servers that share its loop)."""
    members = server.loop_members
    return SupervisorSnapshot(
        state="running",
        pid=os.getpid(),
        uptime=time.monotonic() - started,
        drain_seconds_left=None,
        servers=tuple(
            server_snapshot(member, None, extra_accept_errors if member is members[0] else None)
            for member in members
        ),
        orphans_reaped=0,
        supervised=False,
    )


def _listen_queue(sock: socket.socket | None) -> tuple[int, int] | None:
    if sock is None:
        return None
    try:
        return listen_queue(sock)
    except (OSError, ValueError):
        return None
