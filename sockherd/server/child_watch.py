"""File descriptors that become readable when a forked child exits.

Why: CPython's ForkingMixIn only reaps when `service_actions()` comes round,
so a finished child stays a zombie until the next request or `poll_interval`,
and forever in a `handle_request()` loop.  A SIGCHLD handler would fix that
only in the main thread, and `waitpid(-1)` would steal other code's children.
An fd per child works from any thread and names exactly one pid:

* **pidfd** (Linux >= 5.3): `os.pidfd_open(pid)` is readable once the child is a
  zombie.  Nothing is needed before the fork.
* **sentinel pipe** (every POSIX system, and Linux where seccomp forbids
  pidfd_open): a pipe made before the fork; the child keeps the write end
  open until it exits, so the parent's read end reports EOF then.  A child that
  closes its inherited fds early makes the sentinel fire too soon; callers
  check with `waitpid(pid, WNOHANG)` and fall back to periodic reaping.

Use: `pending = prepare_child_watch()` before `fork()`, then
`pending.in_parent(pid)` (returns the fd to watch, or None) or
`pending.in_child()`; `pending.abandon()` if the fork failed.

Where the system has epoll, a server puts every child's fd in one `ExitPoller` and
its serve loop watches that poller's single fd: adding and removing a child is one
epoll_ctl() each, with no selector bookkeeping in Python on the fork path (the fewer
objects the parent touches after fork(), the fewer copy-on-write faults it takes).
"""

from __future__ import annotations

import logging
import os
import select
from typing import Protocol

log = logging.getLogger(__name__)

_pidfd_supported: bool | None = None

# A sentinel pipe reports EOF when the exiting child closes its fds, a moment before the
# child becomes reapable: whoever reaps on an exit fd retries waitpid() after these
# delays (about 30 ms in all) before deciding the fd fired early.
REAP_RETRY_DELAYS = (0.0, 0.001, 0.002, 0.004, 0.008, 0.016)


def pidfd_supported() -> bool:
    """Whether this process can use pidfds; probed once, with one logged note if not."""
    global _pidfd_supported
    if _pidfd_supported is None:
        _pidfd_supported = _probe_pidfd()
        if not _pidfd_supported:
            log.info(
                "pidfd_open() is not available here (not Linux >= 5.3, or blocked by seccomp): "
                "sockherd watches child exits through sentinel pipes instead"
            )
    return _pidfd_supported


def _probe_pidfd() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


class PendingChildWatch(Protocol):
    """A watch set up before `fork()` and completed on each side of it."""

    def in_parent(self, pid: int) -> int | None:
        """Return an fd that turns readable when `pid` exits, or None if none could be had."""

    def in_child(self) -> None:
        """Drop the parent's half; called first thing in the child."""

    def abandon(self) -> None:
        """Release everything; called when `fork()` failed."""


class _PidfdWatch:
    def in_parent(self, pid: int) -> int | None:
        try:
            return os.pidfd_open(pid)
        except OSError:
            return None  # reaped by someone else already, or fd exhaustion: reap by polling

    def in_child(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class _SentinelPipeWatch:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_inheritable(self.read_fd, False)
        os.set_inheritable(self.write_fd, False)

    def in_parent(self, pid: int) -> int | None:
        os.close(self.write_fd)
        return self.read_fd

    def in_child(self) -> None:
        os.close(self.read_fd)  # the write end stays open until the child exits

    def abandon(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class _NoWatch:
    def in_parent(self, pid: int) -> int | None:
        return None

    def in_child(self) -> None:
        pass

    def abandon(self) -> None:
        pass


def prepare_child_watch() -> PendingChildWatch:
    """Set up the watch for the child about to be forked (see the module docstring)."""
    if pidfd_supported():
        return _PidfdWatch()
    try:
        return _SentinelPipeWatch()
    except OSError:
        return _NoWatch()  # out of fds: the periodic reaping still finds this child


def close_watch_fd(fd: int | None) -> None:
    """Close a watch fd returned by `in_parent()`; None is ignored."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class ExitPoller:
    """One epoll holding many children's exit fds; `fileno()` turns readable when one of
    them does.  Linux only: `make()` returns None where there is no epoll."""

    def __init__(self) -> None:
        self._epoll = select.epoll()  # close-on-exec
        self.pids: dict[int, int] = {}  # exit fd -> pid

    @classmethod
    def make(cls) -> ExitPoller | None:
        """A new poller, or None where epoll is missing or no fd is left for it."""
        if not hasattr(select, "epoll"):
            return None
        try:
            return cls()
        except OSError:
            return None

    def fileno(self) -> int:
        """The fd to watch in the serve loop."""
        return self._epoll.fileno()

    def add(self, fd: int, pid: int) -> bool:
        """Watch `fd`, the exit fd of child `pid`; False if epoll refused it."""
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except OSError:
            return False
        self.pids[fd] = pid
        return True

    def remove(self, fd: int) -> bool:
        """Stop watching `fd` (before it is closed: a child forked meanwhile may hold a
        copy, which would keep it registered); False if it was not watched here."""
        if self.pids.pop(fd, None) is None:
            return False
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        return True

    def ready(self) -> list[int]:
        """The pids whose exit fd is readable now (without waiting)."""
        pids = self.pids
        return [pids[fd] for fd, _events in self._epoll.poll(0) if fd in pids]

    def close(self) -> None:
        """Close the epoll (the exit fds stay open: their owner closes them)."""
        self.pids.clear()
        self._epoll.close()
