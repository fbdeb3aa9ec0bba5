"""The worker lifecycle: every state a prefork worker can be in, and every legal move.

Theory of operation
-------------------
A worker slot in the scoreboard is FREE until the supervisor forks a worker into
it (STARTING).  The worker runs the server's `worker_setup()` hook and reports
IDLE; from then on it flips between IDLE and BUSY once per request.  Told to stop
(SIGTERM, or recycling after `max_requests`), it finishes the request in hand and
goes STOPPING.  Whatever the way out (clean exit, crash, timeout kill), the
supervisor's reaper marks the slot DEAD and folds its counters into the slot's
supervisor-side totals; why it ended is the supervisor's restart reasons table
(`supervisor/worker_exits.py`).

Rule: every state change goes through `Scoreboard.set_state()`, which checks it
against `TRANSITIONS`, so an impossible move (a DEAD worker turning BUSY) raises
`IllegalTransition` naming both states instead of corrupting the scoreboard.  The one
exception is a sync worker's per-request pair IDLE → BUSY → IDLE (`scoreboard.take_request`
and `request_done`), plain stores whose legality the scoreboard module asserts once.  A
worker writes only IDLE, BUSY and STOPPING; the supervisor writes STARTING (before
the fork), DEAD (after waitpid; the slot stays DEAD, observable, until it is
reused) and FREE (as it claims the slot again).
"""

from __future__ import annotations

import enum


class WorkerState(enum.IntEnum):
    """A scoreboard slot's state; the integer is what shared memory holds."""

    FREE = 0
    STARTING = 1
    IDLE = 2
    BUSY = 3
    STOPPING = 4
    DEAD = 5


S = WorkerState

TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    S.FREE: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.IDLE, S.STOPPING, S.DEAD}),  # DEAD: crashed during boot
    S.IDLE: frozenset({S.BUSY, S.STOPPING, S.DEAD}),
    S.BUSY: frozenset({S.IDLE, S.STOPPING, S.DEAD}),
    S.STOPPING: frozenset({S.DEAD}),
    S.DEAD: frozenset({S.FREE}),
}


class IllegalTransition(RuntimeError):
    """A worker state change that the lifecycle table does not allow."""

    def __init__(self, old: WorkerState, new: WorkerState) -> None:
        super().__init__(f"worker state cannot go from {old.name} to {new.name}")
        self.old, self.new = old, new
