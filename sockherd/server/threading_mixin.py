"""ThreadingMixIn: one thread per request, tracked so `server_close()` can join them.

CPython's semantics: `daemon_threads` sets `Thread.daemon`; with
`block_on_close` (the default) non-daemon threads are tracked in a per-instance
`_threads` list created lazily, pruned of finished threads, and joined by
`server_close()`; a SystemExit in a handler escapes to `threading.excepthook`.

Differences: `_Threads` prunes finished threads only when the list has doubled
since the last prune, so tracking is amortised O(1) per request instead of
CPython's O(live threads) per request; and `close_timeout`, when set, bounds
how long `server_close()` waits, leaving stuck threads behind with a warning
(threads cannot be killed).  The default, None, waits as CPython does.
"""

from __future__ import annotations

import logging
import threading
from time import monotonic
from typing import TYPE_CHECKING, Any

from .read_deadline import outcome_of_failure

if TYPE_CHECKING:
    # The host class a mix-in is mixed into, for the type checker only: at run time the
    # mix-in's base is object, so the MRO is CPython's.
    from .socket_servers import TCPServer as _MixInHost
else:
    _MixInHost = object

log = logging.getLogger(__name__)


class _Threads(list[threading.Thread]):
    """Joinable list of all non-daemon threads."""

    _prune_at = 8

    def append(self, thread: threading.Thread) -> None:
        if len(self) >= self._prune_at:
            self.reap()
            self._prune_at = max(8, 2 * len(self))
        if thread.daemon:
            return
        super().append(thread)

    def pop_all(self) -> list[threading.Thread]:
        self[:], result = [], self[:]
        return result

    def join(self, timeout: float | None = None) -> list[threading.Thread]:
        """Join every thread; with a timeout, return those still alive when it expires."""
        deadline = None if timeout is None else monotonic() + timeout
        still_running = []
        for thread in self.pop_all():
            if deadline is None:
                thread.join()
                continue
            thread.join(max(0.0, deadline - monotonic()))
            if thread.is_alive():
                still_running.append(thread)
        return still_running

    def reap(self) -> None:
        self[:] = (thread for thread in self if thread.is_alive())


class _NoThreads:
    """Degenerate version of _Threads."""

    def append(self, thread: threading.Thread) -> None:
        pass

    def join(self, timeout: float | None = None) -> list[threading.Thread]:
        return []


class ThreadingMixIn(_MixInHost):
    """Mix-in class to handle each request in a new thread."""

    # Decides how threads will act upon termination of the
    # main process
    daemon_threads = False
    # If true, server_close() waits until all non-daemonic threads terminate.
    block_on_close = True
    # sockherd: seconds server_close() waits for threads before leaving them; None waits forever.
    close_timeout: float | None = None
    # Threads object
    # used by server_close() to wait for all threads completion.
    _threads: Any = _NoThreads()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Same as in BaseServer but as a thread.

        In addition, exception handling is done here.

        """
        stats = self.request_stats
        stats.started()
        began = monotonic()
        outcome = "error"
        try:
            self.finish_request(request, client_address)
            outcome = "ok"
        except Exception:
            outcome = outcome_of_failure(request)
            self.handle_error(request, client_address)
        finally:
            stats.finished(outcome, monotonic() - began)
            self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a new thread to process the request."""
        if self.block_on_close:
            vars(self).setdefault("_threads", _Threads())
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address))
        t.daemon = self.daemon_threads
        self._threads.append(t)
        t.start()

    def server_close(self) -> None:
        """Close the listening socket, then join the request threads (see `close_timeout`)."""
        super().server_close()
        still_running = self._threads.join(self.close_timeout)
        if still_running:
            log.warning(
                "server_close(): %d request thread(s) still running after close_timeout=%s s; "
                "leaving them behind: %s",
                len(still_running),
                self.close_timeout,
                ", ".join(thread.name for thread in still_running),
            )
