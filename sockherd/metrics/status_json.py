"""`/status.json`, `/livez`, `/readyz`: the snapshot as a stable JSON document, and health.

The document's schema is `sockherd-status/1`, described field by field in
docs/status.md; fields are only ever added under that name (a removal or a change
of meaning gets a new schema name).  It is built by hand from the public snapshot
(`snapshot`), not with `dataclasses.asdict()`, so that a pool of 256 workers
answers in well under 5 ms (bench/status_json.py).

Health, for orchestrators (Kubernetes probes, the image's HEALTHCHECK):

* `/livez` answers 200 whenever the serve loop runs (the endpoint lives in it:
  no answer means the loop is stuck or gone);
* `/readyz` answers 200 when the supervisor is running (not draining or stopped)
  and every pool has at least one worker that has booted and serves; 503
  otherwise, with the reason.  It turns 503 in the loop pass that handles SIGTERM,
  while `/livez` stays 200 until the process exits.
"""

from __future__ import annotations

import json
from typing import Any

from .snapshot import ExitRecord, PoolSnapshot, ServerSnapshot, SupervisorSnapshot, WorkerSnapshot

SCHEMA = "sockherd-status/1"
SERVING_STATES = ("running", "reloading", "upgrading")


def readiness(snapshot: SupervisorSnapshot) -> tuple[bool, str]:
    """(ready, why): serving, and every pool has a booted worker."""
    if snapshot.state not in SERVING_STATES:
        return False, f"supervisor is {snapshot.state}"
    for server in snapshot.servers:
        pool = server.pool
        if pool is not None and not any(w.state in ("idle", "busy") for w in pool.workers):
            return False, f"no ready worker for {server.label}"
    return True, "ready"


def worker_json(worker: WorkerSnapshot) -> dict[str, Any]:
    """One live worker as `/status.json` and `ctl status` give it."""
    return {
        "slot": worker.slot,
        "pid": worker.pid,
        "generation": worker.generation,
        "state": worker.state,
        "requests": worker.requests,
        "errors": worker.errors,
        "age": round(worker.age, 3),
        "heartbeat_age": round(worker.heartbeat_age, 3),
        "started_at": round(worker.started_at, 3),
        "request": worker.request,
        "peer": worker.peer,
        "request_elapsed": worker.request_elapsed,
        "cpu_seconds": worker.cpu_seconds,
        "rss": worker.rss,
        "pss": worker.pss,
        "uss": worker.uss,
        "threads": worker.threads,
        "busy_threads": worker.busy_threads,
        "connections": worker.connections,
    }


def _exit(record: ExitRecord) -> dict[str, Any]:
    return {
        "slot": record.slot,
        "pid": record.pid,
        "cause": record.cause,
        "status": record.status,
        "at": round(record.at, 3),
        "request": record.request,
        "peer": record.peer,
        "request_elapsed": record.request_elapsed,
    }


def _pool(pool: PoolSnapshot) -> dict[str, Any]:
    return {
        "handoff": pool.handoff,
        "desired": pool.desired,
        "generation": pool.generation,
        "settings": dict(pool.settings),
        "workers_total": len(pool.workers),
        "workers_idle": pool.idle,
        "workers_busy": pool.busy,
        "max_workers_reached": pool.max_workers_reached,
        "accepted": pool.accepted,
        "slow_requests": pool.slow_requests,
        "restarts": dict(pool.restarts),
        "exit_causes": dict(pool.exit_causes),
        "workers": [worker_json(worker) for worker in pool.workers],
        "last_exits": [_exit(record) for record in pool.last_exits],
    }


def _server(server: ServerSnapshot) -> dict[str, Any]:
    queue = server.listen_queue
    finished = sum(server.requests.values())
    pool = server.pool
    return {
        "label": server.label,
        "mode": server.mode,
        "accepted": pool.accepted if pool is not None else finished + server.in_progress,
        "requests": dict(server.requests),
        "in_progress": server.in_progress,
        "listen_queue": None if queue is None else {"length": queue[0], "backlog": queue[1]},
        "slow_requests": pool.slow_requests if pool is not None else 0,
        "max_children": server.max_children,
        "pool": None if pool is None else _pool(pool),
    }


def status_document(snapshot: SupervisorSnapshot) -> dict[str, Any]:
    """The `/status.json` document (schema `SCHEMA`, see docs/status.md)."""
    ready, why = readiness(snapshot)
    return {
        "schema": SCHEMA,
        "supervisor": {
            "state": snapshot.state,
            "pid": snapshot.pid,
            "uptime": round(snapshot.uptime, 3),
            "drain_seconds_left": snapshot.drain_seconds_left,
            "supervised": snapshot.supervised,
            "orphans_reaped": snapshot.orphans_reaped,
            "ready": ready,
            "ready_reason": why,
        },
        "servers": [_server(server) for server in snapshot.servers],
    }


def render_status_json(snapshot: SupervisorSnapshot) -> bytes:
    """The document as compact UTF-8 JSON."""
    return json.dumps(status_document(snapshot), separators=(",", ":")).encode()
