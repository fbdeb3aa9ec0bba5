"""Dispatch hand-off: the supervisor accepts and passes each connection to an idle worker.

Each `r` (ready) or `i` (idle again) a worker sends on its channel is one credit:
the worker can take one connection now.  Credits queue in the order they came, so
the least recently busy worker gets the next connection (the fairness dispatch
mode is for).  A credit is spent when a connection is passed (SCM_RIGHTS, see
`workers.fd_passing`); credits of workers that are gone, told to stop or not IDLE
in the scoreboard are skipped.  While no credit is left the supervisor stops
watching the listener, so the backlog waits in the kernel.
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

    def __init__(self, scoreboard: Scoreboard) -> None:
        self.scoreboard = scoreboard
        self.credits: collections.deque[int] = collections.deque()

    def worker_idle(self, index: int) -> None:
        """The worker in slot `index` can take one connection."""
        self.credits.append(index)

    def forget(self, index: int) -> None:
        """Slot `index` takes no more connections (stopping, or gone)."""
        try:
            while True:
                self.credits.remove(index)
        except ValueError:
            pass

    def has_idle_worker(self) -> bool:
        """True if a connection handed over now would be served at once."""
        return bool(self.credits)

    def dispatch(
        self, request: socket.socket, client_address: Any, workers: Mapping[int, WorkerHandle]
    ) -> bool:
        """Pass `request` to the least recently busy idle worker; False if none took it."""
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
