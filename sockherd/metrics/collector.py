"""The collector: metric families built from a server's state at scrape time.

Nothing here counts anything: the figures live where they are produced (the
scoreboard for prefork workers, `request_stats` for sync/threading/forking,
the pool and the child table for exits and restarts) and are read at scrape
time, so no metric object is shared with a forked child and counters stay
monotonic across worker restarts.  Workers are labelled by scoreboard slot,
never by pid.  Metric names follow ../shared/reference/prometheus.md §6.
"""

from __future__ import annotations

import collections
import platform
import time
from collections.abc import Iterator
from typing import Any

from .._version import VERSION
from ..supervisor.autoscaler import listen_queue
from ..workers.lifecycle import WorkerState
from .exposition import Family, counter, gauge, histogram, info, merge, process_families
from .request_stats import DURATION_BUCKETS, OUTCOMES

REPORTED_STATES = (
    WorkerState.STARTING,
    WorkerState.IDLE,
    WorkerState.BUSY,
    WorkerState.STOPPING,
)


def server_label(server: Any) -> str:
    """The `server` label: `metrics_name` if set, else the listening address."""
    name = getattr(server, "metrics_name", None)
    if name:
        return str(name)
    address = server.server_address
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return address.decode() if isinstance(address, bytes) else str(address)


def _exit_labels(reason: str) -> tuple[str, str]:
    """("exit 3" | "signal SIGKILL") -> (exit_code, signal) label values."""
    kind, _, value = reason.partition(" ")
    return (value, "") if kind == "exit" else ("", value)


class ServerCollector:
    """Collects one sockherd server's metrics; `collect()` is called at each scrape."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Iterator[Family]:
        """Yield every metric family, read from the server's live state."""
        server = self.server
        label = server_label(server)
        yield info(
            "sockherd_build",
            "sockherd version and Python",
            {"version": VERSION, "python": platform.python_version()},
        )

        pool = getattr(server, "_sockherd_pool", None)
        if pool is not None:
            by_outcome, buckets, duration_sum = self._pool_requests(pool, label)
        else:
            stats = server.request_stats
            by_outcome = {(label, "", o): stats.by_outcome[o] for o in OUTCOMES}
            buckets, duration_sum = list(stats.buckets), stats.duration_sum

        requests = counter(
            "sockherd_requests", "Requests finished, by outcome (ok, error, timeout, aborted)"
        )
        for (server_name, worker, outcome), value in by_outcome.items():
            requests.add(
                {"server": server_name, "worker": worker, "outcome": outcome}, value, "_total"
            )
        yield requests

        yield histogram(
            "sockherd_request_duration_seconds",
            "Time from the start of a request to its end",
            {"server": label},
            DURATION_BUCKETS,
            buckets,
            duration_sum,
        )

        active = gauge("sockherd_connections_active", "Requests in progress")
        active.add({"server": label}, self._in_flight(pool))
        yield active

        errors = counter(
            "sockherd_accept_errors",
            "Failed accept()/recvfrom() calls in the serving process, by errno",
        )
        for name, value in sorted(self._accept_failures().items()):
            errors.add({"server": label, "errno": name}, value, "_total")
        yield errors

        fork_failures = self._fork_failures(pool)
        if fork_failures:
            forks = counter(
                "sockherd_fork_failures",
                "Failed attempts to fork a request child or a worker, by errno",
            )
            for (kind, name), value in sorted(fork_failures.items()):
                forks.add({"server": label, "kind": kind, "errno": name}, value, "_total")
            yield forks

        if pool is not None:
            yield from self._pool_families(pool, label)
        if hasattr(server, "child_exit_counts"):  # ForkingMixIn
            yield from self._forking_families(label)
        yield from self._listen_queue(label)
        yield from process_families()

    def _accept_failures(self) -> collections.Counter[str]:
        """Failed accepts of the server's socket, the metrics endpoint and the control socket."""
        total: collections.Counter[str] = collections.Counter()
        server = self.server
        backoffs = (
            getattr(server, "_sockherd_accept_backoff", None),
            getattr(getattr(server, "_sockherd_metrics", None), "accept_backoff", None),
            getattr(getattr(server, "_sockherd_control", None), "accept_backoff", None),
        )
        for backoff in backoffs:
            if backoff is not None:
                total.update(backoff.failures)
        return total

    def _fork_failures(self, pool: Any) -> dict[tuple[str, str], int]:
        """{(kind, errno name): failures}: request children (ForkingMixIn), workers (prefork)."""
        found: dict[tuple[str, str], int] = {}
        for kind, failures in (
            ("request", getattr(self.server, "_sockherd_fork_failures", None)),
            ("worker", getattr(pool, "fork_failures", None)),
        ):
            if failures is not None:
                for name, value in failures.by_errno.items():
                    found[(kind, name)] = value
        return found

    # --- per mode -----------------------------------------------------------------------

    def _pool_requests(
        self, pool: Any, label: str
    ) -> tuple[dict[tuple[str, str, str], int], list[int], float]:
        per_worker: dict[tuple[str, str, str], int] = {}
        buckets = [0] * (len(DURATION_BUCKETS) + 1)
        duration_sum = 0.0
        scoreboard = pool.scoreboard
        for index in range(scoreboard.size):
            totals = scoreboard.totals(index)
            if not (totals.requests or totals.timeouts or totals.aborted):
                if index not in pool.workers:
                    continue  # a slot never used: no series
            worker = str(index)
            per_worker[(label, worker, "ok")] = totals.requests - totals.errors
            per_worker[(label, worker, "error")] = totals.errors
            per_worker[(label, worker, "timeout")] = totals.timeouts
            per_worker[(label, worker, "aborted")] = totals.aborted
            buckets = [a + b for a, b in zip(buckets, totals.buckets, strict=True)]
            duration_sum += totals.duration_sum
        return per_worker, buckets, duration_sum

    def _in_flight(self, pool: Any) -> int:
        if pool is not None:
            return sum(1 for i in pool.workers if pool.scoreboard.state(i) == WorkerState.BUSY)
        children = getattr(self.server, "active_children", None)
        if children is not None:
            return len(children)
        return int(self.server.request_stats.in_flight)

    def _pool_families(self, pool: Any, label: str) -> Iterator[Family]:
        workers = gauge("sockherd_workers", "Worker processes by state")
        counts = dict.fromkeys(REPORTED_STATES, 0)
        for index in pool.workers:
            state = pool.scoreboard.state(index)
            if state in counts:
                counts[state] += 1
        for state, value in counts.items():
            workers.add({"server": label, "state": state.name.lower()}, value)
        yield workers

        desired = gauge("sockherd_workers_desired", "Worker count the supervisor aims for")
        desired.add({"server": label}, pool.desired)
        yield desired

        now_monotonic, now_wall = time.monotonic(), time.time()
        age = gauge(
            "sockherd_worker_heartbeat_age_seconds",
            "Seconds since each worker last proved it is alive",
        )
        started = gauge("sockherd_worker_start_time_seconds", "Unix time each worker started")
        for index in sorted(pool.workers):
            slot = pool.scoreboard.slots[index]
            labels = {"server": label, "worker": str(index)}
            age.add(labels, max(0.0, now_monotonic - slot.heartbeat))
            started.add(labels, now_wall - (now_monotonic - slot.started))
        yield age
        yield started

        restarts = counter(
            "sockherd_worker_restarts",
            "Workers that ended, by reason (crashed, timeout, recycled, stopped, boot_failure)",
        )
        for reason, value in sorted(pool.restarts.items()):
            restarts.add({"server": label, "reason": reason}, value, "_total")
        yield restarts

        yield _exits_family(label, "worker", pool.exit_counts)

        orphans = counter(
            "sockherd_orphans_reaped", "Abandoned descendants reaped as PID 1 or child subreaper"
        )
        orphans.add({"server": label}, pool.orphans_reaped, "_total")
        yield orphans

    def _forking_families(self, label: str) -> Iterator[Family]:
        server = self.server
        yield _exits_family(label, "request", server.child_exit_counts)
        limit = gauge("sockherd_max_children", "ForkingMixIn.max_children")
        limit.add({"server": label}, server.max_children)
        yield limit

    def _listen_queue(self, label: str) -> Iterator[Family]:
        sock = getattr(self.server, "socket", None)
        queue = listen_queue(sock) if sock is not None else None
        if queue is None:
            return  # only Linux TCP listeners report it
        waiting = gauge(
            "sockherd_listen_queue_length",
            "Connections waiting in the listen backlog (Linux TCP only)",
        )
        waiting.add({"server": label}, queue[0])
        yield waiting
        backlog = gauge(
            "sockherd_listen_backlog", "The listen backlog the kernel applies (Linux TCP only)"
        )
        backlog.add({"server": label}, queue[1])
        yield backlog


def _exits_family(label: str, kind: str, counts: dict[str, int]) -> Family:
    exits = counter("sockherd_child_exits", "Reaped children by kind, exit code and signal")
    for reason, value in sorted(counts.items()):
        exit_code, signal_name = _exit_labels(reason)
        exits.add(
            {"server": label, "kind": kind, "exit_code": exit_code, "signal": signal_name},
            value,
            "_total",
        )
    return exits


class GroupCollector:
    """Collects the metrics of servers served by one loop, each under its `server` label."""

    def __init__(self, servers: list[Any]) -> None:
        self.collectors = [ServerCollector(server) for server in servers]

    def collect(self) -> Iterator[Family]:
        """Yield every family once, with the samples of every server."""
        yield from merge(family for c in self.collectors for family in c.collect())
