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
its last look, it asks the kernel how many times its thread has given up the CPU
(`getrusage(RUSAGE_THREAD)`: voluntary context switches, it waited; involuntary
ones, it was preempted).  If it has not since the last look, it has been running
back to back; it calls `sched_yield()` between two requests, holding no
connection, so the queued connections go to the workers that were waiting for the
CPU.  A worker that waits on its own (for a client's bytes, for the next
connection) never yields: its waits already hand the CPU over; nor does one that
was just preempted, whose turn starts again.  Where no other task wants the CPU,
`sched_yield()` returns at once.

The cost is one clock reading per request, plus a `getrusage()` and at most one
`sched_yield()` per `TURN`: with the benchmark's HTTP cell (c16, 4 workers, one
core) p99 13.1 → 2.6 ms and p99.9 14.2 → 4.9 ms for 2 % of the throughput
(`bench/cpu_ab.py`, 7 rounds); a 0.5 ms turn gave the same p99 for 5 %.  Off Linux
workers do not take turns.
"""

from __future__ import annotations

import os
import resource
import sys
from time import monotonic

TURN = 0.001  # seconds of taking connections back to back before a worker yields once
_THREAD: int = getattr(resource, "RUSAGE_THREAD", -1)


def supported() -> bool:
    """Whether this system lets a worker see its own context switches and yield (Linux:
    elsewhere a yield may count as a wait, or the thread's counts may be missing)."""
    return sys.platform.startswith("linux") and hasattr(resource, "RUSAGE_THREAD")


class CpuTurns:
    """One worker thread's turn taking: call `request_done()` after each request."""

    def __init__(self, turn: float = TURN) -> None:
        self.turn = turn
        self.looked_at = monotonic()
        self.switches = self._switches()

    def request_done(self) -> bool:
        """Yield the CPU if this thread has run for `turn` seconds without giving it up,
        to a wait or to a preemption; True if it did."""
        now = monotonic()
        if now - self.looked_at < self.turn:
            return False
        switches = self._switches()
        ran_through = switches == self.switches
        if ran_through:
            os.sched_yield()
            switches = self._switches()  # the yield's own switch is not a turn given up
        self.switches = switches
        self.looked_at = monotonic()
        return ran_through

    @staticmethod
    def _switches() -> tuple[int, int]:
        """The calling thread's context switches so far: voluntary (it waited) and
        involuntary (it was preempted; it also had to wait for its turn then)."""
        usage = resource.getrusage(_THREAD)
        return usage.ru_nvcsw, usage.ru_nivcsw
