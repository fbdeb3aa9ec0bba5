"""ForkingMixIn: one child process per request, reaped as soon as it exits.

The documented semantics are CPython's: `process_request()` forks, the parent
closes its copy of the connection, the child runs `finish_request()`,
`shutdown_request()` and `os._exit(0)` (1 after any exception);
`active_children` is a set of pids; `collect_children()` runs from
`service_actions()`, `handle_timeout()` and `server_close()`, and never waits
on a pid it did not fork while below `max_children`.

What sockherd adds (see `child_watch` for the mechanism):

* Every child gets a watch fd that the serve loop sleeps on (through one
  `ExitPoller` for all of them where there is epoll).  When it turns
  readable the loop reaps that one pid at once, in `serve_forever()` and in
  `handle_request()` alike, so a finished child is a zombie for at most one
  loop iteration, whatever `poll_interval` or `timeout` is.
* At `max_children`, `collect_children()` waits on those fds instead of
  `waitpid(-1)`, so it cannot steal another library's child.
* Every exit status is tallied in `child_exit_counts` ("exit 0", "signal SIGKILL").
* The standard streams are flushed before the fork (so a child cannot repeat
  the parent's buffered output) and in the child before `os._exit()` (so what
  a handler printed is not lost).
* fork() failing (EAGAIN at the process limit, ENOMEM): CPython's
  `handle_error()` prints a traceback for every connection and closes it.
  sockherd closes it too (serving it inline would block the loop for the
  whole request) but logs one warning per episode -- "fork failed (EAGAIN:
  Resource temporarily unavailable); closing connections until it works
  again" -- and "fork works again after N failures" when it ends; failures
  are counted by errno in `sockherd_fork_failures_total{kind="request"}`.
* `close_timeout`: when set, `server_close()` waits that long for children,
  then sends SIGTERM, waits `KILL_GRACE` seconds more, then SIGKILL, and logs
  a warning naming the pids.  The default, None, waits as CPython does.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import select
import selectors
import signal
import sys
import time
from time import monotonic
from typing import TYPE_CHECKING, Any

from .base_server import _ServerSelector
from .child_exits import describe_wait_status
from .child_watch import REAP_RETRY_DELAYS, ExitPoller, close_watch_fd, prepare_child_watch
from .fork_failures import ForkFailures
from .heap_freeze import after_fork_in_child, after_fork_in_parent, before_fork

if TYPE_CHECKING:
    # The host class a mix-in is mixed into, for the type checker only: at run time the
    # mix-in's base is object, so the MRO is CPython's.
    from .socket_servers import TCPServer as _MixInHost
else:
    _MixInHost = object

log = logging.getLogger(__name__)

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL once close_timeout has expired
_UNWATCHED_POLL = 0.05  # how often children without a watch fd are polled while waiting


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


def _request_outcome(status: int) -> str:
    """A request child's outcome from its wait status (see process_request's exit codes)."""
    if os.WIFEXITED(status):
        return "ok" if os.WEXITSTATUS(status) == 0 else "error"
    return "aborted"


class _ChildWatch:
    """The parent's handle on one child: its exit fd and its birth."""

    __slots__ = ("fd", "forked_at")

    def __init__(self, fd: int | None, forked_at: float) -> None:
        self.fd = fd
        self.forked_at = forked_at


class ForkingMixIn(_MixInHost):
    """Mix-in class to handle each request in a new process."""

    timeout: float | None = 300
    active_children: set[int] | None = None
    max_children = 40
    # If true, server_close() waits until all child processes complete.
    block_on_close = True
    # sockherd: seconds server_close() waits before it terminates children; None waits forever.
    close_timeout: float | None = None
    # sockherd: gc.freeze() the heap around each fork, so children keep sharing it (heap_freeze).
    freeze_heap = True

    # sockherd state, created lazily (no mix-in __init__, as in CPython).
    _child_watches: dict[int, _ChildWatch] | None = None
    _child_exit_counts: collections.Counter[str] | None = None
    _fork_failures: ForkFailures | None = None
    _exit_poller: ExitPoller | None = None
    _exit_poller_tried = False

    @property
    def child_exit_counts(self) -> collections.Counter[str]:
        """How many children ended how, e.g. {"exit 0": 198, "exit 1": 2}.  Never reset."""
        counts = self._child_exit_counts
        if counts is None:
            counts = self._child_exit_counts = collections.Counter()
        return counts

    @property
    def fork_errors(self) -> dict[str, int]:
        """Requests whose child could not be forked (EAGAIN, ENOMEM, ...), by errno name."""
        failures = self._fork_failures
        return dict(failures.by_errno) if failures is not None else {}

    def collect_children(self, *, blocking: bool = False) -> None:
        """Internal routine to wait for children that have exited."""
        if self.active_children is None:
            return

        # If we're above the max number of children, wait and reap them until
        # we go back below threshold.  CPython uses waitpid(-1) here, which can
        # reap children the server did not fork; we wait on our own children.
        while len(self.active_children) >= self.max_children:
            if not self._wait_for_any_child(deadline=None):
                break

        # Now reap all defunct children.  Without blocking, only those that may have
        # exited: one poll() of the watch fds replaces a waitpid() per live child.
        candidates = self.active_children.copy() if blocking else self._maybe_exited()
        for pid in candidates:
            self._try_reap(pid, 0 if blocking else os.WNOHANG)

    def handle_timeout(self) -> None:
        """Wait for zombies after self.timeout seconds of inactivity.

        May be extended, do not override.
        """
        self.collect_children()

    def service_actions(self) -> None:
        """Collect the zombie child processes regularly in the ForkingMixIn.

        service_actions is called in the BaseServer's serve_forever loop.
        """
        self.collect_children()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Fork a new subprocess to process the request.

        sockherd: when fork() fails (EAGAIN at the process limit, ENOMEM) the
        connection is closed, as in CPython, but without a handle_error()
        traceback per connection: one warning per episode, counted by errno
        (see `fork_failures`).
        """
        pending = prepare_child_watch()
        _flush_std_streams()
        forked_at = monotonic()
        frozen = before_fork(self.freeze_heap)
        try:
            pid = os.fork()
        except OSError as error:
            after_fork_in_parent(frozen)
            pending.abandon()
            self._forks().failed(error, "closing connections until it works again")
            self.shutdown_request(request)
            return
        except BaseException:
            after_fork_in_parent(frozen)
            pending.abandon()
            raise
        if pid:
            # Parent process
            after_fork_in_parent(frozen)
            self._forks().succeeded()
            if self.active_children is None:
                self.active_children = set()
            self.active_children.add(pid)
            self._watch_child(pid, pending.in_parent(pid), forked_at)
            self.close_request(request)
            return
        else:
            # Child process.
            # This must never return, hence os._exit()!
            after_fork_in_child(frozen)
            pending.in_child()
            self.close_loop_fds()
            status = 1
            try:
                self.finish_request(request, client_address)
                status = 0
            except Exception:
                self.handle_error(request, client_address)
            finally:
                try:
                    self.shutdown_request(request)
                finally:
                    _flush_std_streams()
                    os._exit(status)

    def server_close(self) -> None:
        """Close the listening socket, then wait for the children (see `close_timeout`)."""
        super().server_close()
        if self.block_on_close and self.close_timeout is not None:
            self._stop_children_after(self.close_timeout)
        self.collect_children(blocking=self.block_on_close)
        poller, self._exit_poller = self._exit_poller, None
        self._exit_poller_tried = False
        if poller is not None:  # children left running keep their own watch fds
            self.remove_wake_source(poller.fileno())
            poller.close()

    # --- sockherd: the child table -------------------------------------------------

    def _forks(self) -> ForkFailures:
        failures = self._fork_failures
        if failures is None:
            failures = self._fork_failures = ForkFailures("fork")
        return failures

    def _watch_child(self, pid: int, fd: int | None, forked_at: float) -> None:
        watches = self._child_watches
        if watches is None:
            watches = self._child_watches = {}
        watches[pid] = _ChildWatch(fd, forked_at)
        if fd is None:
            return
        poller = self._exit_poller
        if poller is None and not self._exit_poller_tried:
            self._exit_poller_tried = True
            poller = self._exit_poller = ExitPoller.make()
            if poller is not None:
                self.add_wake_source(poller.fileno(), self._reap_exited)
        if poller is None or not poller.add(fd, pid):
            self.add_wake_source(fd, functools.partial(self._reap_one, pid))

    def _reap_exited(self) -> None:
        """The exit poller turned readable: reap each child whose exit fd did."""
        poller = self._exit_poller
        if poller is not None:
            for pid in poller.ready():
                self._reap_one(pid)

    def _unwatch(self, watch: _ChildWatch) -> None:
        if watch.fd is not None:
            poller = self._exit_poller
            if poller is None or not poller.remove(watch.fd):
                self.remove_wake_source(watch.fd)
            close_watch_fd(watch.fd)
            watch.fd = None

    def _reap_one(self, pid: int) -> None:
        """The child's watch fd turned readable: reap it now if it has really exited."""
        # A sentinel pipe reports EOF when the exiting child closes its fds, a moment
        # before the child becomes reapable: retry briefly (at most ~30 ms in all).
        for delay in REAP_RETRY_DELAYS:
            if self._try_reap(pid):
                return
            time.sleep(delay)
        # A sentinel pipe closed early (the child closed its fds): stop watching
        # it, so the loop does not spin; periodic collect_children() reaps it later.
        watch = (self._child_watches or {}).get(pid)
        if watch is not None:
            self._unwatch(watch)

    def _try_reap(self, pid: int, flags: int = os.WNOHANG) -> bool:
        """waitpid() one child and record it if it is gone; True if it left the table."""
        try:
            reaped, status = os.waitpid(pid, flags)
        except ChildProcessError:
            self._child_gone(pid, None)  # someone else reaped it
            return True
        except OSError:
            return False
        if reaped:
            self._child_gone(pid, status)
            return True
        return False

    def _child_gone(self, pid: int, status: int | None) -> None:
        """The one place a reaped (or vanished) child leaves the child table."""
        # Tally first: whoever sees the pid leave active_children may read the counts.
        watch = (self._child_watches or {}).pop(pid, None)
        if status is not None:
            self.child_exit_counts[describe_wait_status(status)] += 1
            if watch is not None:
                self.request_stats.observe(_request_outcome(status), monotonic() - watch.forked_at)
        if watch is not None:
            self._unwatch(watch)
        if status is not None:
            self._child_reaped(pid)
        if self.active_children is not None:
            self.active_children.discard(pid)

    def _maybe_exited(self) -> list[int]:
        """Our children whose watch fd is readable, plus every child that has no watch fd.

        While a serve loop runs, the watch fds sit in its selector and an exited child
        is reaped by its callback as soon as the loop wakes: only the children without a
        watch fd need looking at then, which keeps a poll() of every live child's fd off
        each loop iteration.
        """
        watches = self._child_watches or {}
        if self.serving:
            return [
                pid
                for pid in self.active_children or ()
                if getattr(watches.get(pid), "fd", None) is None
            ]
        candidates = []
        poller = select.poll() if hasattr(select, "poll") else None
        pid_by_fd = {}
        for pid in self.active_children or ():
            watch = watches.get(pid)
            if poller is None or watch is None or watch.fd is None:
                candidates.append(pid)
            else:
                poller.register(watch.fd, select.POLLIN)
                pid_by_fd[watch.fd] = pid
        if pid_by_fd and poller is not None:
            candidates.extend(pid_by_fd[fd] for fd, _events in poller.poll(0))
        return candidates

    def _wait_for_any_child(self, deadline: float | None) -> bool:
        """Block until one of our children is reaped; False if none is left or on timeout."""
        while self.active_children:
            before = len(self.active_children)
            watches = self._child_watches or {}
            unwatched = [
                pid for pid in self.active_children if getattr(watches.get(pid), "fd", None) is None
            ]
            for pid in unwatched:
                self._try_reap(pid)
            if len(self.active_children) < before:
                return True
            timeout = None if not unwatched else _UNWATCHED_POLL
            if deadline is not None:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    return False
                timeout = remaining if timeout is None else min(timeout, remaining)
            with _ServerSelector() as selector:
                for pid, watch in watches.items():
                    if watch.fd is not None and pid in self.active_children:
                        reap = functools.partial(self._reap_one, pid)
                        selector.register(watch.fd, selectors.EVENT_READ, reap)
                for key, _events in selector.select(timeout):
                    key.data()
            if len(self.active_children) < before:
                return True
        return False

    def _stop_children_after(self, grace: float) -> None:
        """Wait `grace` seconds for children; then SIGTERM, KILL_GRACE more, then SIGKILL."""
        started = monotonic()
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_GRACE)):
            deadline = monotonic() + wait
            while self.active_children and self._wait_for_any_child(deadline):
                pass
            if not self.active_children:
                return
            pids = sorted(self.active_children)
            log.warning(
                "server_close(): %d child process(es) still running after %.1f s "
                "(close_timeout=%s); sending %s to pids %s",
                len(pids),
                monotonic() - started,
                grace,
                signum.name,
                pids,
            )
            for pid in pids:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
