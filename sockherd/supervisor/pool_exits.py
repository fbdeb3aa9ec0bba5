"""A reaped worker: why it ended, the request it held, and what the pool records of it.

Theory of operation
-------------------
`worker_exited()` runs once per reaped worker (the reaper's callback).  It reads
the worker's slot before the slot is released -- its stop flag, the state it was
left in, and the live record of the request in hand -- and classifies the exit
with `worker_exits.RESTART_REASONS`.  The pool keeps, per slot, the last exit as
an `ExitRecord` (cause, status, when, the request it held) for the snapshot, and
counts exits by cause.

OOM attribution: a worker killed by SIGKILL that the supervisor did not send
(neither worker_timeout's kill nor a stop's) is checked against the kernel's
OOM-kill counter of the supervisor's memory cgroup (`OomWatch`: v1
`memory.oom_control`, v2 `memory.events`, field `oom_kill`), which the workers
share.  If the counter grew since the last reading, the exit's cause is "oom",
and one line names the worker, the request and how long it had run.  Without a
memory cgroup the check is skipped (one note at the pool's start).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from ..metrics.snapshot import ExitRecord
from ..server.child_exits import describe_wait_status
from ..workers import live_record
from ..workers.cgroup_files import ControllerDir, controller_dir
from ..workers.lifecycle import WorkerState
from .worker_exits import ExitFacts, RestartReason, classify_exit, wait_status
from .worker_process import exit_code_taken, record_exit

if TYPE_CHECKING:
    from .spawner import WorkerHandle
    from .worker_pool import WorkerPool

log = logging.getLogger("sockherd.supervisor.worker_pool")

_CAUSES = {
    RestartReason.STOPPED: "stopped",
    RestartReason.BOOT_FAILURE: "boot_failure",
    RestartReason.TIMEOUT: "timeout",
    RestartReason.RECYCLED: "recycled",
    RestartReason.OOM: "oom",
}


class OomWatch:
    """The OOM-kill counter of this process's memory cgroup, and its last reading."""

    def __init__(self, where: ControllerDir | None = None) -> None:
        self.where = where if where is not None else controller_dir("memory")
        if self.where is None:
            log.info("no memory cgroup found: OOM kills cannot be told from other SIGKILLs")
        self.last = self.read()

    def read(self) -> int | None:
        """The counter now (None without a memory cgroup or the field)."""
        if self.where is None:
            return None
        name = "memory.oom_control" if self.where.version == 1 else "memory.events"
        return self.where.read_keyed(name).get("oom_kill")

    def grew(self) -> bool:
        """Whether the kernel killed for OOM in our cgroup since the last call."""
        now = self.read()
        grew = now is not None and self.last is not None and now > self.last
        if now is not None:
            self.last = now
        return grew


def worker_exited(pool: WorkerPool, index: int, status: int | None) -> None:
    """The reaper took this worker's exit status (None: multiprocess took it first, and
    the adapter has it): count, classify, record, free its slot."""
    handle = pool.workers.pop(index)
    pool.tick_due = True  # replace it
    if status is None:
        code = exit_code_taken(handle.process)
        status = wait_status(code)
    else:
        code = os.waitstatus_to_exitcode(status)
        record_exit(handle.process, code)
    scoreboard = pool.scoreboard
    slot = scoreboard.slots[index]
    timed_out = handle.timeout_abort_at is not None
    in_hand = scoreboard.request_in_hand(index)
    request = peer = elapsed = None
    if in_hand and slot.request_started:
        request, peer = live_record.read(slot)
        elapsed = round(max(0.0, time.monotonic() - slot.request_started), 3)
    unexplained_kill = code == -signal.SIGKILL and not timed_out and not pool.killed
    facts = ExitFacts(
        stop_requested=bool(slot.stop) or pool.stop_deadline is not None,
        last_state=WorkerState(slot.state),
        timed_out=timed_out,
        exitcode=code,
        oom_killed=unexplained_kill and pool.oom.grew(),
    )
    reason = classify_exit(facts)
    description = describe_wait_status(status)
    cause = _CAUSES.get(reason) or ("signal" if code < 0 else "exit")
    pool.exit_counts[description] += 1
    pool.restarts[reason.value] += 1
    pool.exit_causes[cause] += 1
    pool.last_exits[index] = ExitRecord(
        index, handle.pid, cause, description, time.time(), request, peer, elapsed
    )
    pool.readings.forget(handle.pid)
    if handle.channel_open:
        pool.server.remove_wake_source(handle.channel.fileno())
    handle.channel.close()
    handle.process.close()
    if pool.dispatcher is not None:
        pool.dispatcher.forget(index)
    if pool.slow is not None:
        pool.slow.forget(index)
    lost = None
    if in_hand:
        lost = "timeouts" if facts.timed_out else "aborted"
    # A threaded worker may die with several requests in hand: one timed out, the rest aborted.
    scoreboard.release(index, lost, others_lost=max(0, scoreboard.requests_in_hand(index) - 1))
    pool.reforker.worker_gone(index)
    pool.on_child_reaped(handle.pid)
    _log_exit(pool, handle, reason, description, facts, pool.last_exits[index])


def _log_exit(
    pool: WorkerPool,
    handle: WorkerHandle,
    reason: RestartReason,
    description: str,
    facts: ExitFacts,
    record: ExitRecord,
) -> None:
    from ..workers.worker_loop import BOOT_FAILURE_EXIT

    if reason is RestartReason.OOM:
        serving = "while idle"
        if record.request is not None:
            elapsed = record.request_elapsed or 0.0
            serving = f'while serving "{record.request}" from {record.peer} for {elapsed:.1f} s'
        log.error(
            "worker %d (pid %d) was killed by the kernel OOM killer %s",
            handle.index,
            handle.pid,
            serving,
        )
    elif reason is RestartReason.BOOT_FAILURE:
        pool.boot_failures += 1
        delay = pool.spawner.back_off(pool.boot_failures)
        log.error(
            "worker %d (pid %d) died while booting (%s%s); next start in %.1f s",
            handle.index,
            handle.pid,
            description,
            ", worker_setup() raised" if facts.exitcode == BOOT_FAILURE_EXIT else "",
            delay,
        )
    elif reason is RestartReason.RECYCLED:
        log.info("worker %d (pid %d) recycled", handle.index, handle.pid)
    elif reason is RestartReason.CRASHED:
        log.warning(
            "worker %d (pid %d) exited on %s while %s, replacing",
            handle.index,
            handle.pid,
            description.removeprefix("signal "),
            facts.last_state.name.lower(),
        )
