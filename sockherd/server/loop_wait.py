"""The one wait of a serve loop: the listening socket plus the fds that wake the loop.

A `LoopWait` lives for one `serve_forever()` or `handle_request()` call and owns
that call's selector (CPython builds a fresh one per call too).  It watches:

* the server itself (its `fileno()`), unless an accept back-off is in force,
  and likewise every other server of its group (`server.join_loop()`),
  whose ready connections are handled right here;
* the wake sources registered on the server (fd -> callback), e.g. one fd per
  forked child, kept in step as they come and go through
  `BaseServer.add_wake_source()` / `remove_wake_source()`;
* optionally the server's wake-up pipe, which `shutdown()` writes to.

Registrations change incrementally, O(1) per change, so a busy forking loop
does not rebuild its selector on every iteration.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .wakeup import WakeupPipe

if TYPE_CHECKING:
    from .base_server import BaseServer

_LISTENER = object()  # selector key data that marks the server's own socket


class LoopWait:
    """Sleep until the listening socket is readable, running wake-source callbacks meanwhile."""

    def __init__(
        self,
        server: BaseServer,
        sources: Mapping[int, tuple[Callable[[], None], int]],
        guests: Sequence[Any],
        selector: selectors.BaseSelector,
        wakeup: WakeupPipe | None,
        hooks: Sequence[Any] = (),
    ) -> None:
        self._server = server
        self._hooks = hooks
        self._guests = guests
        self._selector = selector
        self._listening: set[Any] = set()  # the servers whose sockets are watched now
        if wakeup is not None:
            selector.register(wakeup.read_fd, selectors.EVENT_READ, wakeup.drain)
        for fd, (callback, events) in sources.items():
            selector.register(fd, events, callback)

    def add(
        self, fd: int, callback: Callable[[], None], events: int = selectors.EVENT_READ
    ) -> None:
        """Watch one more fd (a new child's exit fd), or change how an fd is watched."""
        if fd in self._selector.get_map():
            self._selector.modify(fd, events, callback)
        else:
            self._selector.register(fd, events, callback)

    def remove(self, fd: int) -> None:
        """Stop watching `fd`; call before the fd is closed."""
        try:
            self._selector.unregister(fd)
        except KeyError:
            pass

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to `timeout` seconds; return True if the listening socket is readable.

        A loop hook's `next_wake()` deadline cuts the sleep short.
        Returns False early when only wake sources fired (their callbacks have run).
        While the server's accept back-off is in force, or the server says it is
        not accepting (a prefork pool with no idle worker), the listening socket
        is not watched; a back-off also caps the sleep at the remaining pause.
        """
        server = self._server
        for hook in self._hooks:  # a hook's deadline (slow requests) shortens the sleep
            due = hook.next_wake(server)
            if due is not None:
                left = max(0.0, due - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
        timeout = self._watch(server, _LISTENER, timeout)
        for guest in self._guests:
            timeout = self._watch(guest, guest._handle_request_noblock, timeout)
        listener_ready = woken = False
        for key, _events in self._selector.select(timeout):
            if key.data is _LISTENER:
                listener_ready = True
            else:
                key.data()
                woken = True
        if woken and not listener_ready and server not in self._listening:
            # A callback may have let the unwatched server accept again (a dispatch pool's
            # worker turned idle): a connection already waiting is served in this pass.
            return (
                not server.accept_paused_for() and server.accepting() and server.backlog_waiting()
            )
        return listener_ready

    def _watch(self, server: Any, data: Any, timeout: float | None) -> float | None:
        """Watch `server`'s socket or not, as its back-off and its pool allow; return the
        sleep, capped at the remaining back-off pause."""
        paused_for = server.accept_paused_for()
        if paused_for:
            timeout = paused_for if timeout is None else min(timeout, paused_for)
        listen = not paused_for and server.accepting()
        if listen and server not in self._listening:
            self._selector.register(server, selectors.EVENT_READ, data)
            self._listening.add(server)
        elif not listen and server in self._listening:
            self._selector.unregister(server)
            self._listening.discard(server)
        return timeout
