"""Operator signals for the supervisor: the handler only records and wakes; the loop acts.

`SignalRelay.install()` (main thread only, as Python requires) replaces the
handlers of the signals a supervisor answers to; each handler appends the
signal's name to a queue and writes to the serve loop's wake-up pipe.  The
loop later calls `server.handle_<name>()` (e.g. `handle_sighup`) for each,
outside signal context.  `restore()` puts the previous handlers back.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

SUPERVISOR_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR1")
ORPHAN_SIGNALS = ("SIGCHLD",)  # only when the supervisor reaps orphans


class SignalRelay:
    """Queue of received signal names, filled by handlers, drained by the serve loop."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._pending: collections.deque[str] = collections.deque()
        self._previous: dict[int, object] = {}

    def install(self, names: tuple[str, ...] = SUPERVISOR_SIGNALS) -> bool:
        """Install handlers for `names`; False (and nothing changed) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for name in names:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._record)
        return True

    def _record(self, signum: int, frame: object) -> None:
        self._pending.append(signal.Signals(signum).name)
        self._wake()

    def pending(self) -> list[str]:
        """Take every signal name received since the last call, oldest first."""
        names = []
        while self._pending:
            names.append(self._pending.popleft())
        return names

    def restore(self) -> None:
        """Put back the handlers that were there before `install()`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()
