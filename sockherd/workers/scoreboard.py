"""The scoreboard: one shared-memory slot per worker, the single source of worker state.

It is a shared mapping created by the supervisor before its first fork, so every
worker inherits it; on Linux it is backed by a memfd, which an in-place upgrade
passes on to the new image (nothing on disk, nothing to clean up).  A slot is
written by its owner only: the worker writes its state, heartbeat and request
figures, the supervisor writes pid/generation/start time before the fork, the
`stop` request while the worker lives, and marks the slot dead after reaping
it (see `lifecycle`).  On release the
supervisor folds the slot's figures into `folded[index]`, in its own memory,
so per-slot counters stay monotonic across worker restarts and reloads.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from bisect import bisect_left
from dataclasses import dataclass, field

from ..server.request_stats import DURATION_BUCKETS
from .lifecycle import TRANSITIONS, IllegalTransition, WorkerState
from .live_record import DESCRIPTION_BYTES, PEER_BYTES

BUCKETS = len(DURATION_BUCKETS) + 1  # the last one is +Inf


class Slot(ctypes.Structure):
    """One worker's row.  Times are `time.monotonic()` seconds (system-wide clock)."""

    _fields_ = [
        ("state", ctypes.c_int32),
        ("generation", ctypes.c_int32),
        ("stop", ctypes.c_int32),  # written by the supervisor: finish the request, then exit
        ("pid", ctypes.c_int64),
        ("started", ctypes.c_double),
        ("heartbeat", ctypes.c_double),
        ("requests", ctypes.c_uint64),  # finished, ok or error
        ("errors", ctypes.c_uint64),
        ("timeouts", ctypes.c_uint64),  # cut off by read_timeout (not in `requests`)
        ("begun", ctypes.c_uint64),  # requests started: see Scoreboard.request_in_hand()
        ("duration_sum", ctypes.c_double),
        ("buckets", ctypes.c_uint64 * BUCKETS),  # non-cumulative
        # The live record (see `live_record`): the request in hand, written as it begins.
        ("request_started", ctypes.c_double),
        ("peer", ctypes.c_char * PEER_BYTES),
        ("description", ctypes.c_char * DESCRIPTION_BYTES),
        # Threaded workers (`threads` > 1) only; a sync worker leaves them 0.
        ("threads", ctypes.c_int32),  # the worker's thread pool size
        ("busy_threads", ctypes.c_int32),  # threads serving a request now
        ("oldest_request", ctypes.c_double),  # start of its oldest request in hand; 0: none
    ]


def take_request(slot: Slot, began: float) -> None:
    """A sync worker takes a request in hand at monotonic time `began` (worker side):
    IDLE to BUSY, with the heartbeat, and the request counted as begun.

    The per-request path's own form of `set_state(index, BUSY)` + `begin_request(index)`:
    plain stores on the slot, no transition lookup (IDLE to BUSY is always legal, and
    only the worker writes its state while it lives)."""
    slot.state = _BUSY
    slot.heartbeat = began
    slot.begun += 1


def request_done(slot: Slot, now: float) -> None:
    """A sync worker is IDLE again at monotonic time `now` (BUSY to IDLE, always legal)."""
    slot.state = _IDLE
    slot.heartbeat = now


def record_request(slot: Slot, seconds: float, outcome: str) -> None:
    """`slot`'s worker finished a request with `outcome` (see Scoreboard.record_request)."""
    slot.duration_sum += seconds
    slot.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
    if outcome == "error":
        slot.errors += 1
    # Last, one store that makes the request finished: a worker killed before it
    # lost the request (request_in_hand), after it did not; never both.
    if outcome == "timeout":
        slot.timeouts += 1
    else:
        slot.requests += 1


_BUSY, _IDLE = int(WorkerState.BUSY), int(WorkerState.IDLE)
assert WorkerState.BUSY in TRANSITIONS[WorkerState.IDLE]
assert WorkerState.IDLE in TRANSITIONS[WorkerState.BUSY]


class Header(ctypes.Structure):
    """Pool-wide flags the workers read."""

    _fields_ = [("draining", ctypes.c_int32)]  # 1: the whole server stops; drain the backlog


def _layout(*structures: type[ctypes.Structure]) -> str:
    return ";".join(
        f"{name}:{ctypes.sizeof(kind)}"
        for structure in structures
        for name, kind, *_ in structure._fields_  # noqa: SLF001 (ctypes' own declaration)
    )


LAYOUT = _layout(Header, Slot)
"""The memory layout, as an in-place upgrade checks it: the new image adopts a carried
scoreboard only if its code reads the same layout."""


@dataclass
class FoldedCounts:
    """A slot's figures from workers that have exited (supervisor memory only)."""

    requests: int = 0
    errors: int = 0
    timeouts: int = 0  # cut off by read_timeout, or in hand when killed for worker_timeout
    aborted: int = 0  # requests in hand when a worker died otherwise
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)


def scoreboard_length(size: int) -> int:
    """Bytes of a scoreboard of `size` slots."""
    return ctypes.sizeof(Header) + size * ctypes.sizeof(Slot)


class Scoreboard:
    """`size` slots plus a header, in memory shared with every forked worker.

    Where the system has memfd (Linux), the memory is a memfd's (`fd`, close-on-exec), so
    an in-place upgrade can pass it on and the new image map the same slots
    (`inherited_fd`); elsewhere it is an anonymous shared mapping and `fd` is None.
    """

    def __init__(self, size: int, inherited_fd: int | None = None) -> None:
        self.size = size
        length = scoreboard_length(size)
        self.fd: int | None = inherited_fd
        if self.fd is None and hasattr(os, "memfd_create"):
            try:
                self.fd = os.memfd_create("sockherd-scoreboard", os.MFD_CLOEXEC)
                os.ftruncate(self.fd, length)
            except OSError:
                if self.fd is not None:
                    os.close(self.fd)
                self.fd = None
        if self.fd is None:
            self._memory = mmap.mmap(-1, length)  # MAP_SHARED | MAP_ANONYMOUS
        else:
            if os.fstat(self.fd).st_size != length:
                raise ValueError(f"the inherited scoreboard is not {size} slots long")
            self._memory = mmap.mmap(self.fd, length)  # MAP_SHARED
        self.header = Header.from_buffer(self._memory, 0)
        self.slots = (Slot * size).from_buffer(self._memory, ctypes.sizeof(Header))
        self.folded = [FoldedCounts() for _ in range(size)]

    def state(self, index: int) -> WorkerState:
        """The state of slot `index`."""
        return WorkerState(self.slots[index].state)

    def set_state(self, index: int, new: WorkerState) -> None:
        """Move slot `index` to `new`, refusing moves the lifecycle table forbids."""
        slot = self.slots[index]
        old = slot.state  # a plain int: no enum is built on the per-request path
        if new != old and new not in TRANSITIONS[old]:
            raise IllegalTransition(WorkerState(old), new)
        slot.state = new
        slot.heartbeat = time.monotonic()

    def beat(self, index: int) -> None:
        """Record that the worker in slot `index` is alive and not stuck."""
        self.slots[index].heartbeat = time.monotonic()

    def begin_request(self, index: int) -> None:
        """The worker in slot `index` took a request in hand (worker side)."""
        self.slots[index].begun += 1

    def record_request(self, index: int, seconds: float, outcome: str) -> None:
        """The worker in slot `index` finished a request with `outcome`: "ok", "error",
        or "timeout" (its connection was cut off by read_timeout).  Worker side."""
        record_request(self.slots[index], seconds, outcome)

    def request_in_hand(self, index: int) -> bool:
        """Whether the worker in slot `index` has begun a request it has not finished.

        Exact even when the worker was killed at any point of finishing it, where
        its BUSY state is not: it stays BUSY a moment after counting the request.
        """
        return self.requests_in_hand(index) > 0

    def requests_in_hand(self, index: int) -> int:
        """How many requests the worker in slot `index` has begun and not finished
        (at most 1, or its `threads`); exact as `request_in_hand()` is."""
        slot = self.slots[index]
        return max(0, int(slot.begun) - int(slot.requests) - int(slot.timeouts))

    def can_take_request(self, index: int) -> bool:
        """Whether the worker in slot `index` would serve one more request now: it is
        IDLE, or threaded and BUSY with a thread free (the autoscaler's idle worker)."""
        slot = self.slots[index]
        if slot.state == WorkerState.IDLE:
            return True
        return bool(slot.state == WorkerState.BUSY and slot.busy_threads < slot.threads)

    def busy_since(self, index: int) -> float:
        """When the worker in slot `index` took in hand its oldest running request (or,
        booting, when it started): what `worker_timeout` measures.  Monotonic seconds."""
        slot = self.slots[index]
        return float(slot.oldest_request or slot.heartbeat)

    def claim(self, generation: int) -> int | None:
        """Take the first FREE or DEAD slot (its last worker reaped) for a worker about to
        be forked; None if all are taken.  A replacement takes its predecessor's slot, so
        the `worker` label of the metrics names a position in the pool, not a process."""
        for index in range(self.size):
            if self.slots[index].state in (WorkerState.FREE, WorkerState.DEAD):
                slot = self.slots[index]
                if slot.state == WorkerState.DEAD:
                    self.set_state(index, WorkerState.FREE)
                slot.generation = generation
                slot.stop = 0
                slot.pid = 0
                slot.threads = slot.busy_threads = 0
                slot.oldest_request = 0.0
                slot.started = time.monotonic()
                self.set_state(index, WorkerState.STARTING)
                return index
        return None

    def release(self, index: int, request_lost: str | None = None, others_lost: int = 0) -> None:
        """After the worker is reaped: fold its figures into `folded[index]` and mark the
        slot DEAD, which it stays (observable, its last pid kept) until `claim()` reuses it.

        `request_lost` is "timeouts" or "aborted" when it died with a request in hand;
        `others_lost` counts a threaded worker's other requests in hand, as "aborted".
        """
        slot = self.slots[index]
        self.set_state(index, WorkerState.DEAD)
        folded = self.folded[index]
        folded.requests += slot.requests
        folded.errors += slot.errors
        folded.timeouts += slot.timeouts
        folded.duration_sum += slot.duration_sum
        for bucket in range(BUCKETS):
            folded.buckets[bucket] += slot.buckets[bucket]
            slot.buckets[bucket] = 0
        if request_lost:
            setattr(folded, request_lost, getattr(folded, request_lost) + 1)
        folded.aborted += others_lost
        slot.requests = slot.errors = slot.timeouts = slot.begun = 0
        slot.duration_sum = 0.0

    def totals(self, index: int) -> FoldedCounts:
        """Slot `index`'s figures, exited workers and the live one together (monotonic)."""
        slot, folded = self.slots[index], self.folded[index]
        return FoldedCounts(
            requests=folded.requests + slot.requests,
            errors=folded.errors + slot.errors,
            timeouts=folded.timeouts + slot.timeouts,
            aborted=folded.aborted,
            duration_sum=folded.duration_sum + slot.duration_sum,
            buckets=[folded.buckets[b] + slot.buckets[b] for b in range(BUCKETS)],
        )

    def total_requests(self) -> int:
        """Requests served or lost by every worker, dead or alive (monotonic)."""
        return sum(t.requests + t.timeouts + t.aborted for t in map(self.totals, range(self.size)))

    def close_fd(self) -> None:
        """Close the memfd (a worker needs only the mapping); the mapping stays."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """Unmap the memory (the supervisor, once every worker is gone)."""
        self.close_fd()
        del self.header, self.slots
        self._memory.close()
