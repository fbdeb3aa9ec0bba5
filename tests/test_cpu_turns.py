"""Taking turns (`workers.cpu_turns`): a worker thread that serves requests back to back
yields the CPU once per turn between two requests; one that waits on its own never does.
Real getrusage(RUSAGE_THREAD) and sched_yield(); what it does to latency is measured in
bench/ (`bench/cpu_ab.py --mode http`), not asserted here."""

from __future__ import annotations

import time

import pytest

from sockherd.workers import cpu_turns
from sockherd.workers.cpu_turns import CpuTurns

pytestmark = pytest.mark.skipif(
    not cpu_turns.supported(), reason="needs RUSAGE_THREAD and sched_yield() (Linux)"
)

TURN = 0.002
WINDOW = 0.1  # seconds of requests per test


def _serve_without_waiting(seconds: float) -> None:
    """A request whose bytes were all there already: CPU only, no system call that blocks."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_thread_that_never_waits_yields_about_once_per_turn():
    turns = CpuTurns(turn=TURN)
    yields = requests = 0
    deadline = time.monotonic() + WINDOW
    while time.monotonic() < deadline:
        _serve_without_waiting(0.0002)
        requests += 1
        yields += turns.request_done()
    # 100 ms of back-to-back requests: at most one yield per 2 ms turn.  Fewer if this
    # thread happened to wait (the GIL, a page fault on a busy machine) in some turns.
    assert 10 <= yields <= WINDOW / TURN + 1, (yields, requests)
    assert requests > 4 * yields  # between two requests, never after every one


def test_a_thread_that_waits_between_requests_never_yields():
    turns = CpuTurns(turn=TURN)
    yields = requests = 0
    deadline = time.monotonic() + WINDOW
    while time.monotonic() < deadline:
        time.sleep(0.001)  # waits for its client: the thread blocks, a voluntary switch
        _serve_without_waiting(0.0002)
        requests += 1
        yields += turns.request_done()
    assert requests >= 20
    assert yields == 0


def test_no_yield_before_a_turn_has_passed():
    turns = CpuTurns(turn=60.0)
    _serve_without_waiting(0.01)
    assert turns.request_done() is False
