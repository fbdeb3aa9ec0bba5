"""Taking turns on a shared CPU: a worker that has not waited for a while yields between requests.

Theory of operation
-------------------
In accept mode a free worker accepts until the backlog is empty.  When every
connection's request has already arrived (HTTP/1.0 behind a full backlog) a worker
never waits for anything: it runs until the scheduler's tick preempts it, and
that tick falls in the middle of a request as often as not.  The connection it
holds then waits while the other workers sharing the CPU each run their own
slice: with 4 workers on one core and a 4 ms tick, about 13 ms, for 1 to 2 % of
the requests (the HTTP p99 of the benchmark: 13 ms, against 1.1 ms at p50).  A
connection still in the backlog does not have that problem: whichever worker
runs next takes it.

So a worker takes turns: after a request, once `TURN` seconds have passed since
its last look, it asks the kernel how many times its thread has waited
(`getrusage(RUSAGE_THREAD)`'s voluntary context switches).  If it has not waited
since the last look, it has been running back to back; it calls
`sched_yield()` between two requests, holding no connection, so the queued
connections go to the workers that were waiting for the CPU.  A worker that waits
on its own (for a client's bytes, for the next connection) never yields: its
waits already hand the CPU over.  Where no other task wants the CPU,
`sched_yield()` returns at once.

The cost is one clock reading per request, plus a `getrusage()` and at most one
`sched_yield()` per `TURN`: with the benchmark's HTTP cell (c16, 4 workers, one
core) p99 13.1 → 1.9 ms at the same throughput (`bench/cpu_ab.py`).  Where
RUSAGE_THREAD or sched_yield() is missing (not Linux), workers do not take turns.
"""

from __future__ import annotations

import os
import resource
from time import monotonic

TURN = 0.0005  # seconds of taking connections back to back before a worker yields once
_THREAD: int = getattr(resource, "RUSAGE_THREAD", -1)


def supported() -> bool:
    """Whether this system lets a worker see its own waits and yield (Linux)."""
    return hasattr(resource, "RUSAGE_THREAD") and hasattr(os, "sched_yield")


class CpuTurns:
    """One worker thread's turn taking: call `request_done()` after each request."""

    def __init__(self, turn: float = TURN) -> None:
        self.turn = turn
        self.looked_at = monotonic()
        self.waits = self._waits()

    def request_done(self) -> bool:
        """Yield the CPU if this thread has not waited for `turn` seconds; True if it did."""
        now = monotonic()
        if now - self.looked_at < self.turn:
            return False
        waits = self._waits()
        ran_through = waits == self.waits
        if ran_through:
            os.sched_yield()
        self.waits = waits  # a yield is not a wait: the count stays comparable
        self.looked_at = monotonic()
        return ran_through

    @staticmethod
    def _waits() -> int:
        """The calling thread's voluntary context switches so far (it blocked)."""
        return resource.getrusage(_THREAD).ru_nvcsw
