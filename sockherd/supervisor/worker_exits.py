"""Why a worker ended: the restart reasons, as a table beside the worker lifecycle.

A reaped worker is classified from facts the supervisor holds -- whether it was
told to stop, the state its scoreboard slot was left in, whether its request ran
past `worker_timeout`, its exit status -- by the first matching row of
`RESTART_REASONS`.  The reason is counted (`sockherd_worker_restarts_total`) and
logged by the pool; a boot failure also delays the next start (see `spawner`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..workers.lifecycle import WorkerState

log = logging.getLogger("sockherd.supervisor.worker_pool")


class RestartReason(enum.Enum):
    """Why a worker ended; the value is the metrics label."""

    STOPPED = "stopped"  # told to stop (scale down, reload, the server stopping)
    BOOT_FAILURE = "boot_failure"  # died before it reported ready
    TIMEOUT = "timeout"  # killed for running past worker_timeout
    RECYCLED = "recycled"  # left by itself after max_requests or max_worker_memory
    CRASHED = "crashed"  # anything else: a signal, an unexpected exit


@dataclass(frozen=True)
class ExitFacts:
    """What the supervisor knows of a worker when it is reaped."""

    stop_requested: bool  # the pool set its slot's stop flag, or the whole pool stops
    last_state: WorkerState  # the state its slot was left in
    timed_out: bool  # the pool sent it SIGABRT for worker_timeout
    exitcode: int  # as multiprocess reports it: negative for a signal


RESTART_REASONS: tuple[tuple[Callable[[ExitFacts], bool], RestartReason], ...] = (
    (lambda f: f.stop_requested, RestartReason.STOPPED),
    (lambda f: f.last_state == WorkerState.STARTING, RestartReason.BOOT_FAILURE),
    (lambda f: f.timed_out, RestartReason.TIMEOUT),
    (
        lambda f: f.last_state == WorkerState.STOPPING and f.exitcode == 0,
        RestartReason.RECYCLED,
    ),
    (lambda f: True, RestartReason.CRASHED),
)


def classify_exit(facts: ExitFacts) -> RestartReason:
    """The first reason of `RESTART_REASONS` whose rule matches."""
    for rule, reason in RESTART_REASONS:
        if rule(facts):
            return reason
    raise AssertionError("the last rule matches everything")


def wait_status(exitcode: int) -> int:
    """Rebuild a waitpid() status from multiprocess's exitcode (negative: signal)."""
    if exitcode < 0:
        return -exitcode
    return (exitcode & 0xFF) << 8


def log_worker_exit(
    index: int,
    pid: int,
    reason: RestartReason,
    description: str,
    facts: ExitFacts,
    delay: float,
) -> None:
    """One log line for a worker that ended (none for a requested stop); `delay`: the
    back-off before the next start, after a boot failure."""
    from ..workers.worker_loop import BOOT_FAILURE_EXIT

    if reason is RestartReason.BOOT_FAILURE:
        log.error(
            "worker %d (pid %d) died while booting (%s%s); next start in %.1f s",
            index,
            pid,
            description,
            ", worker_setup() raised" if facts.exitcode == BOOT_FAILURE_EXIT else "",
            delay,
        )
    elif reason is RestartReason.RECYCLED:
        log.info("worker %d (pid %d) recycled", index, pid)
    elif reason is RestartReason.CRASHED:
        log.warning(
            "worker %d (pid %d) exited on %s while %s, replacing",
            index,
            pid,
            description.removeprefix("signal "),
            facts.last_state.name.lower(),
        )
