"""Operator signals for the supervisor: the handler only records and wakes; the loop acts.

`SignalRelay.install()` (main thread only, as Python requires) replaces the
handlers of the signals a supervisor answers to; each handler appends the
signal's name to a queue and writes a byte to the relay's own self-pipe, whose
read end is a wake source of the serve loop.  The Arbiter then dispatches each
name to a method (`handle_sigterm`, `handle_sighup`, ...) outside signal context.
`restore()` puts the previous handlers back.

A request child forked from the supervisor (fork mode) inherits the handlers: in
it, a signal is given back to the default action, so the child dies of SIGTERM as
it would without a supervisor.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..server.wakeup import WakeupPipe

SUPERVISOR_SIGNALS = (
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR1", "SIGUSR2",
)  # fmt: skip
ORPHAN_SIGNALS = ("SIGCHLD",)  # only when the supervisor reaps orphans
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers


class SignalRelay:
    """Queue of received signal names, filled by handlers, drained by the serve loop."""

    def __init__(self) -> None:
        self.pipe = WakeupPipe()
        self._pid = os.getpid()
        self._pending: collections.deque[str] = collections.deque()
        self._previous: dict[int, _Handler | None] = {}

    def install(self, names: tuple[str, ...] = SUPERVISOR_SIGNALS) -> bool:
        """Install handlers for `names`; False (and nothing changed) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for name in names:
            signum = getattr(signal, name, None)
            if signum is not None and signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._record)
        # An in-place upgrade blocks them across exec (a TERM then would kill the process
        # mid-upgrade): now that they are handled, what arrived meanwhile is delivered.
        wanted = {getattr(signal, name) for name in names if hasattr(signal, name)}
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)
        return True

    @property
    def installed(self) -> bool:
        """Whether the handlers are in place."""
        return bool(self._previous)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked request child: die as it would anyway
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._pending.append(signal.Signals(signum).name)
        self.pipe.wake()

    def pending(self) -> list[str]:
        """Take every signal name received since the last call, oldest first."""
        self.pipe.drain()
        names = []
        while self._pending:
            names.append(self._pending.popleft())
        return names

    def restore(self) -> None:
        """Put back the handlers that were there before `install()`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def close(self) -> None:
        """Restore the handlers and close the pipe."""
        self.restore()
        self.pipe.close()

    def close_in_child(self) -> None:
        """In a forked worker: close the pipe; the worker installs handlers of its own."""
        self.pipe.close()
