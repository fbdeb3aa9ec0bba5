"""Dispatch hand-off: the supervisor accepts and passes each connection to an idle worker.

Each `r` (ready) or `i` (idle again) a worker sends on its channel is one credit:
the worker can take one connection now.  Credits queue in the order they came, so
the least recently busy worker gets the next connection (the fairness dispatch
mode is for).  A credit is spent when a connection is passed (SCM_RIGHTS, see
`workers.fd_passing`); credits of workers that are gone, told to stop or not IDLE
in the scoreboard are skipped.  While no credit is left the supervisor stops
watching the listener, so the backlog waits in the kernel.

Threaded workers (`threads` > 1) send one credit per free thread (`r` and
`threads - 1` `i` when ready, one `i` per finished request).  Their credits are
counted per worker and a connection goes to the worker with the most free
threads, the least recently sent to among equals; such a worker may be BUSY
(some threads are) and still take one.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Mapping
from typing import Any

from ..workers.fd_passing import send_connection
from ..workers.lifecycle import WorkerState
from ..workers.scoreboard import Scoreboard
from .spawner import WorkerHandle


class Dispatcher:
    """The credits of one pool's workers."""

    def __init__(self, scoreboard: Scoreboard, threads: int = 1) -> None:
        self.scoreboard = scoreboard
        self.credits: collections.deque[int] = collections.deque()
        self.threads = threads
        self.free: dict[int, int] = {}  # threaded workers: slot -> credits (free threads)
        self.last_sent: dict[int, int] = {}  # threaded workers: slot -> hand-off number
        self.sent = 0

    def worker_idle(self, index: int) -> None:
        """The worker in slot `index` can take one connection (one more, if threaded)."""
        if self.threads > 1:
            self.free[index] = self.free.get(index, 0) + 1
        else:
            self.credits.append(index)

    def forget(self, index: int) -> None:
        """Slot `index` takes no more connections (stopping, or gone)."""
        self.free.pop(index, None)
        self.last_sent.pop(index, None)
        try:
            while True:
                self.credits.remove(index)
        except ValueError:
            pass

    def credit_list(self) -> list[int]:
        """Every credit, one slot index each (oldest first for sync workers): calling
        `worker_idle()` with each, in order, on a new Dispatcher gives it the same credits."""
        if self.threads > 1:
            return [index for index, count in self.free.items() for _ in range(count)]
        return list(self.credits)

    def has_idle_worker(self) -> bool:
        """True if a connection handed over now would be served at once."""
        return bool(self.credits or self.free)

    def dispatch(
        self, request: socket.socket, client_address: Any, workers: Mapping[int, WorkerHandle]
    ) -> bool:
        """Pass `request` to the least recently busy idle worker (threaded workers: the one
        with the most free threads); False if none took it."""
        if self.threads > 1:
            return self._dispatch_to_threads(request, client_address, workers)
        while self.credits:
            index = self.credits.popleft()
            handle = workers.get(index)
            slot = self.scoreboard.slots[index]
            if handle is None or slot.stop or slot.state != WorkerState.IDLE:
                continue
            try:
                send_connection(handle.channel, request, client_address)
            except OSError:
                continue  # that worker is going away; try the next one
            return True
        return False

    def _dispatch_to_threads(
        self, request: socket.socket, client_address: Any, workers: Mapping[int, WorkerHandle]
    ) -> bool:
        serving = (WorkerState.IDLE, WorkerState.BUSY)
        while self.free:
            index = max(self.free, key=lambda i: (self.free[i], -self.last_sent.get(i, 0)))
            handle = workers.get(index)
            slot = self.scoreboard.slots[index]
            if handle is None or slot.stop or slot.state not in serving:
                self.forget(index)
                continue
            try:
                send_connection(handle.channel, request, client_address)
            except OSError:
                self.forget(index)
                continue
            self.free[index] -= 1
            if not self.free[index]:
                del self.free[index]
            self.sent += 1
            self.last_sent[index] = self.sent
            return True
        return False
