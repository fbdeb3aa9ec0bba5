"""The collector: metric families built from the public snapshot at scrape time.

Nothing here counts anything and nothing here reads a private attribute: each
scrape asks its snapshot source for one `SupervisorSnapshot` (see `snapshot`)
and turns it into families.  The figures live where they are produced (the
scoreboard for prefork workers, `request_stats` for sync/threading/forking, the
pools and the child table for exits and restarts), so no metric object is shared
with a forked child and counters stay monotonic across worker restarts.  Workers
are labelled by scoreboard slot, never by pid.  Metric names follow
../shared/reference/prometheus.md section 6.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping

from .._version import VERSION
from ..server.request_stats import DURATION_BUCKETS, OUTCOMES
from .exposition import Family, counter, gauge, histogram, info, process_families
from .pool_memory_families import pool_memory_families
from .snapshot import (
    EXIT_CAUSES,
    SUPERVISOR_STATES,
    PoolSnapshot,
    ServerSnapshot,
    SupervisorSnapshot,
)

REPORTED_STATES = ("starting", "idle", "busy", "stopping")


def _exit_labels(reason: str) -> tuple[str, str]:
    """("exit 3" | "signal SIGKILL") -> (exit_code, signal) label values."""
    kind, _, value = reason.partition(" ")
    return (value, "") if kind == "exit" else ("", value)


UPGRADE_OUTCOMES = ("ok", "preflight_failed", "not_ready")


class SnapshotCollector:
    """Collects the metrics of one process; `collect()` is called at each scrape."""

    def __init__(self, source: Callable[[], SupervisorSnapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Family]:
        """Yield every metric family, each with the samples of every server."""
        snapshot = self.source()
        servers = snapshot.servers
        yield info(
            "sockherd_build",
            "sockherd version and Python",
            {"version": VERSION, "python": platform.python_version()},
        )
        if snapshot.supervised:
            state = gauge(
                "sockherd_supervisor_state",
                "The supervisor's state: 1 for the current one, 0 for the others",
            )
            for name in SUPERVISOR_STATES:
                state.add({"state": name}, 1 if name == snapshot.state else 0)
            yield state
            upgrades = counter("sockherd_upgrades", "In-place upgrades (ctl upgrade, SIGUSR2)"
                               " by outcome: ok, preflight_failed, not_ready")  # fmt: skip
            for outcome in UPGRADE_OUTCOMES:
                upgrades.add({"outcome": outcome}, snapshot.upgrades.get(outcome, 0), "_total")
            yield upgrades
            images = gauge(
                "sockherd_supervisor_images",
                "Programs this supervisor process has run: 1 + in-place upgrades that exec'd",
            )
            images.add({}, snapshot.images)
            yield images
            generation = gauge(
                "sockherd_generation",
                "The generation of workers serving: +1 at each reload and upgrade",
            )
            for server in servers:
                if server.pool is not None:
                    generation.add({"server": server.label}, server.pool.generation)
            yield generation

        requests = counter(
            "sockherd_requests", "Requests finished, by outcome (ok, error, timeout, aborted)"
        )
        for server in servers:
            for worker, by_outcome in _requests_by_worker(server):
                for outcome in OUTCOMES:
                    labels = {"server": server.label, "worker": worker, "outcome": outcome}
                    requests.add(labels, by_outcome.get(outcome, 0), "_total")
        yield requests

        durations = histogram(
            "sockherd_request_duration_seconds", "Time from the start of a request to its end"
        )
        for server in servers:
            durations.add_histogram(
                {"server": server.label}, DURATION_BUCKETS, server.buckets, server.duration_sum
            )
        yield durations

        active = gauge("sockherd_connections_active", "Requests in progress")
        for server in servers:
            active.add({"server": server.label}, server.in_progress)
        yield active

        errors = counter(
            "sockherd_accept_errors",
            "Failed accept()/recvfrom() calls in the serving process, by errno",
        )
        for server in servers:
            for name, value in sorted(server.accept_errors.items()):
                errors.add({"server": server.label, "errno": name}, value, "_total")
        yield errors

        forks = counter(
            "sockherd_fork_failures",
            "Failed attempts to fork a request child or a worker, by errno",
        )
        for server in servers:
            failed = [("request", server.fork_failures)]
            if server.pool is not None:
                failed.append(("worker", server.pool.fork_failures))
            for kind, by_errno in failed:
                for name, value in sorted(by_errno.items()):
                    labels = {"server": server.label, "kind": kind, "errno": name}
                    forks.add(labels, value, "_total")
        if forks.samples:
            yield forks

        pools = [(server.label, server.pool) for server in servers if server.pool is not None]
        if pools:
            yield from _pool_families(pools, snapshot.orphans_reaped)
            yield from pool_memory_families(pools)
        exits = counter("sockherd_child_exits", "Reaped children by kind, exit code and signal")
        limits = gauge("sockherd_max_children", "ForkingMixIn.max_children")
        for server in servers:
            if server.pool is not None:
                _add_exits(exits, server.label, "worker", server.pool.exits)
            if server.child_exits is not None:
                _add_exits(exits, server.label, "request", server.child_exits)
                limits.add({"server": server.label}, server.max_children or 0)
        if pools or limits.samples:
            yield exits
        if limits.samples:
            yield limits
        yield from _listen_queue_families(servers)
        yield from process_families()


def _requests_by_worker(server: ServerSnapshot) -> Iterator[tuple[str, Mapping[str, int]]]:
    """(worker label, requests by outcome): per slot in a pool, else one "" series."""
    if server.pool is None:
        yield "", server.requests
        return
    live = {worker.slot for worker in server.pool.workers}
    for slot in server.pool.slots:
        if any(slot.by_outcome.values()) or slot.slot in live:
            yield str(slot.slot), slot.by_outcome


def _pool_families(pools: list[tuple[str, PoolSnapshot]], orphans: int) -> Iterator[Family]:
    workers = gauge("sockherd_workers", "Worker processes by state")
    desired = gauge("sockherd_workers_desired", "Worker count the supervisor aims for")
    age = gauge(
        "sockherd_worker_heartbeat_age_seconds",
        "Seconds since each worker last proved it is alive",
    )
    started = gauge("sockherd_worker_start_time_seconds", "Unix time each worker started")
    restarts = counter(
        "sockherd_worker_restarts",
        "Workers that ended, by reason (crashed, timeout, recycled, stopped, boot_failure)",
    )
    threads = gauge("sockherd_threads", "Request threads of the live workers by state (busy, idle)")
    reaped = counter(
        "sockherd_orphans_reaped", "Abandoned descendants reaped as PID 1 or child subreaper"
    )
    for label, pool in pools:
        counts = dict.fromkeys(REPORTED_STATES, 0)
        for worker in pool.workers:
            if worker.state in counts:
                counts[worker.state] += 1
        for state, value in counts.items():
            workers.add({"server": label, "state": state}, value)
        desired.add({"server": label}, pool.desired)
        busy, idle = pool.thread_counts
        threads.add({"server": label, "state": "busy"}, busy)
        threads.add({"server": label, "state": "idle"}, idle)
        for worker in sorted(pool.workers, key=lambda w: w.slot):
            labels = {"server": label, "worker": str(worker.slot)}
            age.add(labels, worker.heartbeat_age)
            started.add(labels, worker.started_at)
        for reason, value in sorted(pool.restarts.items()):
            restarts.add({"server": label, "reason": reason}, value, "_total")
    reaped.add({"server": pools[0][0]}, orphans, "_total")
    yield from (workers, desired, threads, age, started, restarts, reaped)
    yield from _worker_detail_families(pools)


def _worker_detail_families(pools: list[tuple[str, PoolSnapshot]]) -> Iterator[Family]:
    """Per-worker CPU and memory (from /proc), exits by cause, slow requests."""
    cpu = counter("sockherd_worker_cpu_seconds", "CPU time (user + system) of each live worker")
    memory = gauge(
        "sockherd_worker_memory_bytes",
        "Memory of each live worker: rss, pss (shared pages divided), uss (private)",
    )
    causes = counter(
        "sockherd_worker_exits",
        "Workers that ended, by cause (exit, signal, timeout, oom, recycled, stopped, "
        "boot_failure)",
    )
    slow = counter(
        "sockherd_slow_requests", "Requests that ran past slow_request_timeout (traceback logged)"
    )
    for label, pool in pools:
        for worker in sorted(pool.workers, key=lambda w: w.slot):
            labels = {"server": label, "worker": str(worker.slot)}
            if worker.cpu_seconds is not None:
                cpu.add(labels, worker.cpu_seconds, "_total")
            for kind in ("rss", "pss", "uss"):
                value = getattr(worker, kind)
                if value is not None:
                    memory.add({**labels, "kind": kind}, value)
        for cause in EXIT_CAUSES:
            causes.add({"server": label, "cause": cause}, pool.exit_causes.get(cause, 0), "_total")
        slow.add({"server": label}, pool.slow_requests, "_total")
    yield from (cpu, memory, causes, slow)


def _add_exits(family: Family, label: str, kind: str, counts: Mapping[str, int]) -> None:
    for reason, value in sorted(counts.items()):
        exit_code, signal_name = _exit_labels(reason)
        labels = {"server": label, "kind": kind, "exit_code": exit_code, "signal": signal_name}
        family.add(labels, value, "_total")


def _listen_queue_families(servers: tuple[ServerSnapshot, ...]) -> Iterator[Family]:
    queues = [(s.label, s.listen_queue) for s in servers if s.listen_queue is not None]
    if not queues:
        return  # only Linux TCP listeners report it
    waiting = gauge(
        "sockherd_listen_queue_length",
        "Connections waiting in the listen backlog (Linux TCP only)",
    )
    backlog = gauge(
        "sockherd_listen_backlog", "The listen backlog the kernel applies (Linux TCP only)"
    )
    for label, (queued, limit) in queues:
        waiting.add({"server": label}, queued)
        backlog.add({"server": label}, limit)
    yield waiting
    yield backlog
