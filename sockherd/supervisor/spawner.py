"""Forking one worker: a scoreboard slot, a channel, a process, and the child's bootstrap.

The parent side (`Spawner.spawn`) claims a slot, makes the channel (a Unix socket
pair the worker reports `r`eady and `i`dle on, and dispatch mode passes
connections over), forks with multiprocess's fork context and hands the new
child to the reaper.  A fork that fails (EAGAIN, ENOMEM, EMFILE) is retried after
a back-off that doubles from 0.1 s to 10 s, logged once per episode (see
`fork_failures`); the same back-off spaces restarts after boot failures.

The child side (`_worker_main`) leads its own process group (a timeout kill takes
the handler's children too), asks to die with the supervisor, closes every fd only
the supervisor may hold (`BaseServer.close_loop_fds()`: the wake-up pipes, and
through the Arbiter's loop hooks its signal pipe, control socket, metrics endpoint
and the other workers' channels and exit fds), then runs the worker loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..server.child_watch import pidfd_supported
from ..server.fork_failures import ForkFailures
from ..server.heap_freeze import (
    FrozenForFork,
    after_fork_in_child,
    after_fork_in_parent,
    before_fork,
)
from ..workers.scoreboard import Scoreboard
from ..workers.worker_kinds import make_worker
from .pool_sizing import host_sizing
from .worker_process import worker_process_class

if TYPE_CHECKING:
    from .pool_settings import PreforkServer

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0


def backoff_delay(failures: int) -> float:
    """Seconds to wait before the next start after `failures` failures in a row."""
    return float(min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX))


@dataclass
class WorkerHandle:
    """What the supervisor holds for one live worker (its state is in the scoreboard)."""

    index: int
    pid: int
    process: Any  # multiprocess Process
    channel: socket.socket
    generation: int
    channel_open: bool = True  # False once the worker closed its end (it is exiting)
    timeout_abort_at: float | None = None  # when SIGABRT was sent for worker_timeout
    started_at: float = field(default_factory=time.monotonic)


class Spawner:
    """Forks the workers of one pool."""

    def __init__(self, server: PreforkServer, scoreboard: Scoreboard, handoff: str) -> None:
        import multiprocess

        self.server = server
        self.scoreboard = scoreboard
        self.handoff = handoff
        self.process_class = worker_process_class(multiprocess.get_context("fork"))
        self.fork_failures = ForkFailures("fork of a worker")
        self.next_spawn_at = 0.0  # no start before this (a back-off is in force)

    def may_spawn(self, now: float) -> bool:
        """Whether no back-off holds the next start back."""
        return now >= self.next_spawn_at

    def back_off(self, failures: int) -> float:
        """Hold the next start back after `failures` failures in a row; return the delay."""
        delay = backoff_delay(failures)
        self.next_spawn_at = time.monotonic() + delay
        return delay

    def spawn(self, generation: int) -> WorkerHandle | None:
        """Fork one worker of `generation` into a free slot; None if that failed."""
        index = self.scoreboard.claim(generation)
        if index is None:
            log.warning("no free scoreboard slot: not starting another worker")
            return None
        try:
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as error:
            self._failed(index, error)
            return None
        usable_cpus = host_sizing().workers  # read once per process, before the fork
        frozen = before_fork(self.server.freeze_heap)
        process = self.process_class(
            target=_worker_main,
            args=(self.server, index, self.scoreboard, child_end, self.handoff),
            kwargs={"usable_cpus": usable_cpus, "frozen": frozen},
            name=f"sockherd-worker-{index}",
            daemon=True,
        )
        try:
            process.start()
        except OSError as error:
            parent_end.close()
            child_end.close()
            self._failed(index, error)
            return None
        finally:
            after_fork_in_parent(frozen)  # the child never returns from start()
        self.fork_failures.succeeded()
        child_end.close()
        parent_end.setblocking(False)
        self.scoreboard.slots[index].pid = process.pid
        return WorkerHandle(index, int(process.pid), process, parent_end, generation)

    def _failed(self, index: int, error: OSError) -> None:
        """A worker could not be forked: give the slot back, back off, log once, count."""
        self.scoreboard.release(index)
        delay = self.back_off(self.fork_failures.episode_failures + 1)
        self.fork_failures.failed(
            error,
            f"retrying in {delay:.1f} s, backing off up to {BACKOFF_MAX:.0f} s, "
            "until it works again",
        )


def exit_fd_of(process: Any) -> tuple[int, bool]:
    """An fd that turns readable when `process` exits, and whether the caller owns it
    (a pidfd) or multiprocess does (its sentinel pipe)."""
    if pidfd_supported():
        try:
            return os.pidfd_open(process.pid), True
        except OSError:
            pass
    return int(process.sentinel), False


def _worker_main(
    server: PreforkServer,
    index: int,
    scoreboard: Scoreboard,
    channel: socket.socket,
    handoff: str,
    *,
    usable_cpus: int = 0,
    frozen: FrozenForFork | None = None,
) -> None:
    """In the child: collect again (the inherited heap stays frozen), drop the supervisor's
    fds, then run the worker loop (`usable_cpus`: the pool's, from `pool_sizing`)."""
    after_fork_in_child(frozen)
    os.setpgid(0, 0)  # its own process group: a timeout kill takes its children too
    _die_with_parent()
    server.close_loop_fds()
    for member in server.loop_members:
        if member.socket is not server.socket:
            member.socket.close()  # another server's listener: not this worker's business
    worker = make_worker(
        server,
        index,
        scoreboard,
        channel,
        handoff,
        server.heartbeat_interval,
        usable_cpus=usable_cpus,
    )
    raise SystemExit(worker.run())  # multiprocess flushes the streams and exits with it


_pdeathsig_noted = False


def _die_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies.  Elsewhere workers notice via getppid()."""
    global _pdeathsig_noted
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) == 0:
            return
    except (OSError, AttributeError):
        pass
    if not _pdeathsig_noted:
        _pdeathsig_noted = True
        log.info("PR_SET_PDEATHSIG is not available: workers notice a dead supervisor late")
