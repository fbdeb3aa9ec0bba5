"""The supervisor's child table and its one reaper.

Theory of operation
-------------------
Every child the supervisor is responsible for -- workers of every pool, and the
orphans it inherits as PID 1 or child subreaper -- is reaped here, once:

* each watched child has an exit fd (pidfd, or multiprocess's sentinel pipe) in
  the serve loop; when it turns readable, `waitpid(pid, WNOHANG)` takes the
  status (retried briefly: a sentinel fires a moment before the child is
  reapable) and the child's `on_exit(status)` callback turns it into its owner's
  event (the pool replaces the worker);
* with orphan duty, SIGCHLD makes the Arbiter call `reap_any()`: `waitpid(-1)`
  until nothing is left; a pid in the table goes the same way, anything else is
  an abandoned grandchild, counted and reported to `on_orphan`.

Request children of a ForkingMixIn server are not here: CPython documents that
server's own reaping (`collect_children()` from `service_actions()`), and its
suites check it.  The Arbiter therefore takes orphan duty only when no forking
server shares the process, so `waitpid(-1)` never steals a request child.
"""

from __future__ import annotations

import logging
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..server.child_exits import describe_wait_status
from ..server.child_watch import REAP_RETRY_DELAYS

log = logging.getLogger(__name__)


@dataclass
class WatchedChild:
    """One child in the table: its exit fd and what to do with its status."""

    pid: int
    exit_fd: int
    owns_exit_fd: bool  # a pidfd we opened (closed here), not multiprocess's sentinel
    on_exit: Callable[[int | None], None]  # the waitpid() status; None: reaped elsewhere


class ChildReaper:
    """The child table; `add_source`/`remove_source` are the serve loop's wake sources."""

    def __init__(
        self,
        add_source: Callable[[int, Callable[[], None]], None],
        remove_source: Callable[[int], None],
        on_orphan: Callable[[int], None],
    ) -> None:
        self._add_source = add_source
        self._remove_source = remove_source
        self._on_orphan = on_orphan
        self.children: dict[int, WatchedChild] = {}
        self.orphans_reaped = 0

    def watch(
        self, pid: int, exit_fd: int, owns_exit_fd: bool, on_exit: Callable[[int | None], None]
    ) -> None:
        """Reap `pid` when `exit_fd` turns readable, and hand its status to `on_exit`."""
        self.children[pid] = WatchedChild(pid, exit_fd, owns_exit_fd, on_exit)
        self._add_source(exit_fd, lambda: self.exit_fd_ready(pid))

    def exit_fd_ready(self, pid: int) -> None:
        """The child's exit fd is readable: reap it if it has really exited."""
        if pid not in self.children:
            return  # reap_any() took it in the same pass
        for delay in REAP_RETRY_DELAYS:
            if self._try_reap(pid):
                return
            time.sleep(delay)
        # Not reapable yet: the fd stays registered and fires again.

    def reap_any(self) -> None:
        """Orphan duty: reap every child that has exited, ours or abandoned ones."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self._reaped(pid, status)
                continue
            self.orphans_reaped += 1
            log.debug("reaped orphan pid %d (%s)", pid, describe_wait_status(status))
            self._on_orphan(pid)

    def wait(self, timeout: float | None) -> None:
        """Outside the serve loop: block until a watched child exits (or `timeout`) and
        reap what has exited."""
        with selectors.PollSelector() as selector:
            for child in self.children.values():
                selector.register(child.exit_fd, selectors.EVENT_READ, child.pid)
            for key, _events in selector.select(timeout):
                self.exit_fd_ready(key.data)

    def close_in_child(self) -> None:
        """In a forked worker: close the exit fds only the supervisor may hold."""
        for child in self.children.values():
            if child.owns_exit_fd:
                os.close(child.exit_fd)
        self.children = {}

    def _try_reap(self, pid: int) -> bool:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Reaped elsewhere: multiprocess's Process.start() waits for its exited
            # children first.  The owner's callback gets None and asks the adapter.
            self._reaped(pid, None)
            return True
        if not reaped:
            return False
        self._reaped(pid, status)
        return True

    def _reaped(self, pid: int, status: int | None) -> None:
        """The one place a child leaves the table."""
        child = self.children.pop(pid)
        self._remove_source(child.exit_fd)
        if child.owns_exit_fd:
            os.close(child.exit_fd)
        child.on_exit(status)
