"""`worker_timeout`: a worker stuck on one request (or its boot) is killed and replaced.

gunicorn calls this step `murder_workers()`.  The deadline is per request (and per
boot), measured from the heartbeat the worker stores as each request starts (a
threaded worker: from the start of its oldest request in hand): an idle worker is
never killed for being idle, even where its accept() cannot wake up to beat.  A
threaded worker killed for one request loses its other requests in hand too; they
are counted as `aborted`.  Past the deadline the worker gets SIGABRT, so its faulthandler writes
the Python traceback of the stuck request to stderr; `kill_grace` seconds later
its whole process group gets SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable

from ..workers.lifecycle import WorkerState
from ..workers.scoreboard import Scoreboard
from .spawner import WorkerHandle

log = logging.getLogger(__name__)


def enforce_timeouts(
    workers: Iterable[WorkerHandle],
    scoreboard: Scoreboard,
    limit: float | None,
    kill_grace: float,
    now: float,
) -> None:
    """SIGABRT each worker busy for longer than `limit`; SIGKILL its group after kill_grace."""
    for handle in workers:
        slot = scoreboard.slots[handle.index]
        if handle.timeout_abort_at is not None:
            if now - handle.timeout_abort_at > kill_grace:
                kill_group(handle.pid, signal.SIGKILL)
            continue
        busy = slot.state in (WorkerState.BUSY, WorkerState.STARTING)
        if limit and busy and now - scoreboard.busy_since(handle.index) > limit:
            log.error(
                "worker %d (pid %d) has been %s for %.1f s (worker_timeout=%s): "
                "sending SIGABRT for a traceback, SIGKILL in %.1f s",
                handle.index,
                handle.pid,
                WorkerState(slot.state).name,
                now - scoreboard.busy_since(handle.index),
                limit,
                kill_grace,
            )
            handle.timeout_abort_at = now
            send_signal(handle.pid, signal.SIGABRT)


def send_signal(pid: int, signum: int) -> None:
    """Signal one process; a process already gone is not an error.  A pid not known
    yet (0: a reforked worker not adopted yet) is never signalled: 0 means our group."""
    if pid <= 0:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def kill_group(pid: int, signum: int) -> None:
    """Signal a worker's process group (it leads one), or the worker alone if that fails."""
    if pid <= 0:
        return
    try:
        os.killpg(pid, signum)
    except OSError:
        send_signal(pid, signum)
