"""What a server's serve loop keeps between calls: one object, owned by the server.

BaseServer creates it lazily (`BaseServer._loop`), so subclasses that skip the
`__init__` chain still work, and its public extension points delegate here:
the wake sources and the `LoopWait` watching them, the wake-up pipe, the accept
back-off, the loop hooks attached and those taking part in the running loop, the
thread serving, and the servers sharing one loop (`join_loop`).
"""

from __future__ import annotations

import logging
import select
import selectors
from collections.abc import Callable
from typing import TYPE_CHECKING

from .accept_backoff import AcceptBackoff
from .loop_hooks import LoopHooks
from .loop_wait import LoopWait
from .request_stats import RequestStats
from .wakeup import WakeupPipe

if TYPE_CHECKING:
    from .base_server import BaseServer

log = logging.getLogger(__name__)


class LoopState:
    """The loop state of one server."""

    def __init__(self) -> None:
        self.wakeup: WakeupPipe | None = None
        self.accept_backoff: AcceptBackoff | None = None
        self.serving_thread: int | None = None
        self.wake_sources: dict[int, tuple[Callable[[], None], int]] = {}
        self.waiter: LoopWait | None = None
        self.attached_hooks: tuple[LoopHooks, ...] = ()
        self.running_hooks: tuple[LoopHooks, ...] = ()  # those taking part in the running loop
        self.host: BaseServer | None = None  # the server whose loop serves this one
        self.guests: tuple[BaseServer, ...] = ()  # the servers this one's loop serves
        self.request_stats: RequestStats | None = None
        self.backlog_poll: tuple[int, select.poll] | None = None  # (fd, poll of it)

    def add_wake_source(self, fd: int, callback: Callable[[], None], writable: bool) -> None:
        """Watch `fd` from now on (in the running loop too)."""
        events = selectors.EVENT_WRITE if writable else selectors.EVENT_READ
        self.wake_sources[fd] = (callback, events)
        if self.waiter is not None:
            self.waiter.add(fd, callback, events)

    def remove_wake_source(self, fd: int) -> None:
        """Stop watching `fd`."""
        self.wake_sources.pop(fd, None)
        if self.waiter is not None:
            self.waiter.remove(fd)

    def wakeup_pipe(self, address: object) -> WakeupPipe | None:
        """The wake-up pipe, made if needed; None (with a warning) if it cannot be."""
        wakeup = self.wakeup
        if wakeup is None or wakeup.closed:
            try:
                wakeup = self.wakeup = WakeupPipe()
            except OSError as error:
                log.warning(
                    "serve_forever() on %s runs without its wake-up pipe (%s): shutdown() "
                    "may take up to poll_interval",
                    address,
                    error,
                )
                return None
        return wakeup

    def close_wakeup(self) -> None:
        """Close the wake-up pipe (server_close, or a forked child)."""
        wakeup, self.wakeup = self.wakeup, None
        if wakeup is not None:
            wakeup.close()

    def backoff(self) -> AcceptBackoff:
        """The accept back-off, made on first use."""
        if self.accept_backoff is None:
            self.accept_backoff = AcceptBackoff()
        return self.accept_backoff

    def stats(self) -> RequestStats:
        """The request figures, made on first use."""
        if self.request_stats is None:
            self.request_stats = RequestStats()
        return self.request_stats
