"""Request counts and durations kept by the process that sees requests finish.

Sync and threading servers observe each request in the server process;
ForkingMixIn observes each child when it is reaped (its exit status is the
outcome, fork-to-reap the duration); prefork workers keep the same figures in
their scoreboard slot (`workers.scoreboard`), with the same bucket bounds.
"""

from __future__ import annotations

import bisect
import threading

# Upper bounds (seconds) of the request duration histogram; +Inf is implicit.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
OUTCOMES = ("ok", "error", "timeout", "aborted")


def bucket_index(seconds: float) -> int:
    """Index of the first bucket whose bound is >= seconds (len(DURATION_BUCKETS) for +Inf)."""
    return bisect.bisect_left(DURATION_BUCKETS, seconds)


class RequestStats:
    """Counters by outcome, a duration histogram and the number in flight; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_outcome = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # non-cumulative; last is +Inf
        self.duration_sum = 0.0
        self.in_flight = 0

    def started(self) -> None:
        """A request began (for the in-flight gauge)."""
        with self._lock:
            self.in_flight += 1

    def finished(self, outcome: str, seconds: float) -> None:
        """A request that `started()` ended with `outcome` after `seconds`."""
        with self._lock:
            self.in_flight -= 1
            self._record(outcome, seconds)

    def observe(self, outcome: str, seconds: float) -> None:
        """Record a request whose start was not reported (e.g. a reaped child)."""
        with self._lock:
            self._record(outcome, seconds)

    def _record(self, outcome: str, seconds: float) -> None:
        self.by_outcome[outcome] += 1
        self.buckets[bucket_index(seconds)] += 1
        self.duration_sum += seconds
