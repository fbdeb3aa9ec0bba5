"""The scoreboard: one shared-memory slot per worker, the single source of worker state.

It is an anonymous shared mapping created by the supervisor before its first fork,
so every worker inherits it; no file, no fd, nothing to clean up.  A slot is
written by its owner only: the worker writes its state, heartbeat and counters,
the supervisor writes pid/generation/start time before the fork and marks the
slot dead after reaping it (see `lifecycle`).  The supervisor folds a dead
slot's counters into `retired` so totals stay monotonic across restarts.
"""

from __future__ import annotations

import ctypes
import mmap
import time

from .lifecycle import WorkerState, advance


class Slot(ctypes.Structure):
    """One worker's row.  Times are `time.monotonic()` seconds (system-wide clock)."""

    _fields_ = [
        ("state", ctypes.c_int32),
        ("generation", ctypes.c_int32),
        ("pid", ctypes.c_int64),
        ("started", ctypes.c_double),
        ("heartbeat", ctypes.c_double),
        ("requests", ctypes.c_uint64),
        ("errors", ctypes.c_uint64),
    ]


class Totals(ctypes.Structure):
    """Counters of workers that have exited, and the server-wide stop flag."""

    _fields_ = [
        ("requests", ctypes.c_uint64),
        ("errors", ctypes.c_uint64),
        ("draining", ctypes.c_int32),  # 1: the whole server stops; workers drain the backlog
    ]


class Scoreboard:
    """`size` slots plus retired totals, in memory shared with every forked worker."""

    def __init__(self, size: int) -> None:
        self.size = size
        length = ctypes.sizeof(Totals) + size * ctypes.sizeof(Slot)
        self._memory = mmap.mmap(-1, length)  # MAP_SHARED | MAP_ANONYMOUS
        self.retired = Totals.from_buffer(self._memory, 0)
        self.slots = (Slot * size).from_buffer(self._memory, ctypes.sizeof(Totals))

    def state(self, index: int) -> WorkerState:
        """The state of slot `index`."""
        return WorkerState(self.slots[index].state)

    def set_state(self, index: int, new: WorkerState) -> None:
        """Move slot `index` to `new`, refusing moves the lifecycle table forbids."""
        slot = self.slots[index]
        slot.state = advance(WorkerState(slot.state), new)
        slot.heartbeat = time.monotonic()

    def beat(self, index: int) -> None:
        """Record that the worker in slot `index` is alive and not stuck."""
        self.slots[index].heartbeat = time.monotonic()

    def claim(self, generation: int) -> int | None:
        """Take a FREE slot for a worker about to be forked; None if all are taken."""
        for index in range(self.size):
            if self.slots[index].state == WorkerState.FREE:
                slot = self.slots[index]
                slot.generation = generation
                slot.pid = 0
                slot.requests = slot.errors = 0
                slot.started = time.monotonic()
                self.set_state(index, WorkerState.STARTING)
                return index
        return None

    def release(self, index: int) -> None:
        """After the worker is reaped: mark DEAD, fold its counters into `retired`, free it."""
        slot = self.slots[index]
        self.set_state(index, WorkerState.DEAD)
        self.retired.requests += slot.requests
        self.retired.errors += slot.errors
        slot.requests = slot.errors = 0
        slot.pid = 0
        self.set_state(index, WorkerState.FREE)

    def total_requests(self) -> int:
        """Requests served by every worker, dead or alive (monotonic)."""
        return self.retired.requests + sum(slot.requests for slot in self.slots)

    def close(self) -> None:
        """Unmap the memory (the supervisor, once every worker is gone)."""
        del self.retired, self.slots
        self._memory.close()
