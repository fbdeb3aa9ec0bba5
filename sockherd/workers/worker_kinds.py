"""Which worker a prefork pool runs: the synchronous `worker_loop.Worker`, or a
`threaded_worker.ThreadedWorker` where the server's `threads` setting is above 1."""

from __future__ import annotations

from typing import Any

from .threaded_worker import DEFAULT_WORKER_CONNECTIONS, ThreadedWorker
from .worker_loop import Worker


def make_worker(server: Any, *args: Any, usable_cpus: int = 0) -> Worker:
    """The worker for `server` (arguments: those of `Worker`).  `usable_cpus`: how many
    CPUs' worth of time the pool may use (`supervisor.pool_sizing`), 0 if not known."""
    threads = getattr(server, "threads", 1) or 1
    if threads > 1:
        connections = getattr(server, "worker_connections", None) or DEFAULT_WORKER_CONNECTIONS
        return ThreadedWorker(
            server, *args, threads=threads, connections=connections, usable_cpus=usable_cpus
        )
    return Worker(server, *args)
