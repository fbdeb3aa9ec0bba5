"""A worker pool handed from one image of the supervisor to the next (in-place upgrade).

Theory of operation
-------------------
An in-place upgrade `exec`s the supervisor: same pid, new code.  The workers are
not touched: they stay the supervisor's children and go on serving.  What the old
image knew of them in its own memory is written down by `carry_pool()` as JSON,
and every fd the new image needs is made inheritable: the scoreboard's memfd (so the
slots, their states and counters, are the very same memory) and each worker's
channel (closing it would tell the worker that its supervisor is gone).

The new image's pool is built on that scoreboard (`carried_scoreboard()`), and
`adopt_pool()` re-creates a handle per worker: its channel, an exit fd (a pidfd:
the pid cannot have been reused, since nobody reaped it), its place in the one
reaper's table, and the dispatch credits.  The folded figures of exited workers,
the exit and restart counts come along, so every counter stays monotonic.  The
pool then starts a new generation exactly as a reload does: the adopted workers
keep serving until the new ones are ready (the Arbiter's readiness gate).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

from ..workers.scoreboard import LAYOUT, FoldedCounts, Scoreboard
from .reaper import ChildReaper
from .spawner import WorkerHandle
from .worker_process import AdoptedProcess
from .worker_timeouts import send_signal

if TYPE_CHECKING:
    from .worker_pool import WorkerPool


def carry_pool(pool: WorkerPool) -> dict[str, Any]:
    """What the next image needs to adopt `pool`; its fds are made inheritable.

    ValueError if the scoreboard is not a memfd (no memfd on this system).
    """
    if pool.scoreboard.fd is None:
        raise ValueError("the scoreboard is not in a memfd (needs Linux)")
    os.set_inheritable(pool.scoreboard.fd, True)
    workers = []
    for handle in pool.workers.values():
        handle.channel.set_inheritable(True)
        workers.append(
            {
                "index": handle.index,
                "pid": handle.pid,
                "channel": handle.channel.fileno(),
                "channel_open": handle.channel_open,
                "generation": handle.generation,
                "started_at": handle.started_at,
                "timeout_abort_at": handle.timeout_abort_at,
            }
        )
    return {
        "scoreboard": pool.scoreboard.fd,
        "layout": LAYOUT,
        "size": pool.scoreboard.size,
        "generation": pool.generation,
        "folded": [dataclasses.asdict(folded) for folded in pool.scoreboard.folded],
        "exit_counts": dict(pool.exit_counts),
        "restarts": dict(pool.restarts),
        "credits": pool.dispatcher.credit_list() if pool.dispatcher is not None else [],
        "workers": workers,
    }


def keep_pool_private(pool: WorkerPool) -> None:
    """Undo `carry_pool()`'s inheritable fds (the exec failed)."""
    if pool.scoreboard.fd is not None:
        os.set_inheritable(pool.scoreboard.fd, False)
    for handle in pool.workers.values():
        handle.channel.set_inheritable(False)


def carried_scoreboard(carried: dict[str, Any]) -> Scoreboard:
    """The scoreboard the old image passed on, with its folded figures.

    Its size is the old pool's: the new settings may want more workers than it can
    hold (a restart, not an upgrade, grows it).  ValueError if the new code lays the
    scoreboard out differently (`let_go()` then releases the old workers).
    """
    fd, size = int(carried["scoreboard"]), int(carried["size"])
    os.set_inheritable(fd, False)
    if carried.get("layout") != LAYOUT:
        os.close(fd)
        raise ValueError("the new sockherd lays its scoreboard out differently")
    scoreboard = Scoreboard(size, inherited_fd=fd)
    scoreboard.folded = [FoldedCounts(**folded) for folded in carried["folded"]]
    return scoreboard


def adopt_pool(pool: WorkerPool, carried: dict[str, Any]) -> int:
    """Take over the old image's workers into `pool` (built on `carried_scoreboard()`) and
    start the next generation; return how many workers were adopted."""
    pool.exit_counts.update(carried["exit_counts"])
    pool.restarts.update(carried["restarts"])
    for worker in carried["workers"]:
        channel = socket.socket(fileno=int(worker["channel"]))
        channel.set_inheritable(False)
        channel.setblocking(False)
        handle = WorkerHandle(
            index=int(worker["index"]),
            pid=int(worker["pid"]),
            process=AdoptedProcess(int(worker["pid"])),
            channel=channel,
            generation=int(worker["generation"]),
            channel_open=bool(worker["channel_open"]),
            timeout_abort_at=worker["timeout_abort_at"],
            started_at=float(worker["started_at"]),
        )
        pool.watch(handle, os.pidfd_open(handle.pid), owns_exit_fd=True)
    if pool.dispatcher is not None:
        for index in carried["credits"]:
            if index in pool.workers:
                pool.dispatcher.worker_idle(index)
    pool.generation = int(carried["generation"])
    pool.reload()
    return len(carried["workers"])


def abandon_generation(pool: WorkerPool) -> None:
    """A failed upgrade: the previous generation is current again; the new one stops."""
    pool.generation -= 1
    pool.boot_failures = 0
    pool.spawner.next_spawn_at = 0.0
    for handle in list(pool.workers.values()):
        if handle.generation > pool.generation:
            pool.stop_worker(handle)
    pool.tick_due = True


def let_go(carried: dict[str, Any], reaper: ChildReaper) -> None:
    """The old workers cannot be adopted: ask each to stop after its request, reap them."""
    for worker in carried["workers"]:
        pid = int(worker["pid"])
        os.close(int(worker["channel"]))
        reaper.watch(pid, os.pidfd_open(pid), True, lambda status: None)
        send_signal(pid, signal.SIGTERM)
