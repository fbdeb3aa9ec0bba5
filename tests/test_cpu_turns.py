"""Taking turns (`workers.cpu_turns`): a worker thread that serves requests back to back
yields the CPU at most once per turn, between two requests; one that waits on its own
never does.  Real getrusage(RUSAGE_THREAD) and sched_yield(); what it does to latency is
measured in bench/ (`bench/cpu_ab.py --mode http`), not asserted here."""

from __future__ import annotations

import time

import pytest

from sockherd.workers import cpu_turns
from sockherd.workers.cpu_turns import CpuTurns

pytestmark = pytest.mark.skipif(
    not cpu_turns.supported(), reason="needs RUSAGE_THREAD and sched_yield() (Linux)"
)

TURN = 0.002
REQUEST_CPU = 0.0002  # seconds of CPU per request


def _serve_without_waiting() -> None:
    """A request whose bytes were all there already: CPU only (timed on this thread's CPU
    clock, so a preemption does not shorten it), no system call that blocks."""
    end = time.thread_time() + REQUEST_CPU
    while time.thread_time() < end:
        pass


def test_a_thread_that_never_waits_yields_at_most_once_per_turn():
    turns = CpuTurns(turn=TURN)
    yields = requests = 0
    began = time.monotonic()
    while yields < 10 and time.monotonic() - began < 5.0:
        _serve_without_waiting()
        requests += 1
        yields += turns.request_done()
    elapsed = time.monotonic() - began
    # A turn in which this thread was preempted (a loaded machine) ends without a yield;
    # the others end with one, between two requests, never after every request.
    assert yields >= 3, (yields, requests, elapsed)
    assert yields <= elapsed / TURN + 1
    assert requests >= 4 * yields


def test_a_thread_that_waits_between_requests_never_yields():
    turns = CpuTurns(turn=TURN)
    yields = requests = 0
    began = time.monotonic()
    while time.monotonic() - began < 0.1:
        time.sleep(0.001)  # waits for its client: the thread blocks, a voluntary switch
        _serve_without_waiting()
        requests += 1
        yields += turns.request_done()
    assert (time.monotonic() - began) / TURN >= 10  # many turns went by
    assert requests >= 5
    assert yields == 0


def test_no_yield_before_a_turn_has_passed():
    turns = CpuTurns(turn=60.0)
    _serve_without_waiting()
    assert turns.request_done() is False
