"""The supervisor's worker pool: fork, watch, reap, replace, scale, reload and stop workers.

Theory of operation (after gunicorn's arbiter)
----------------------------------------------
The pool lives inside the server's ordinary serve loop.  Each worker adds two
wake sources to that loop: an fd that turns readable when the worker exits
(pidfd, else multiprocess's sentinel pipe) and its channel, on which it sends
`r` (ready) and `i` (idle again, dispatch mode).  After every wake-up the loop
calls `tick()`, which runs three reconciliation steps:

* `enforce_timeouts()`: a worker busy with one request (or still booting) for
  longer than `worker_timeout` gets SIGABRT (its faulthandler dumps the stack
  to stderr), and SIGKILL to its whole process group `kill_grace` seconds later;
* `reconcile()`: fork workers until the current generation has `desired`
  live ones (waiting out a back-off after boot failures), stop surplus ones,
  and during a reload stop one old worker for each new one that is ready
  (a worker that cannot be forked -- EAGAIN, ENOMEM, EMFILE -- is retried
  after the same back-off, logged once per episode, see `fork_failures`);
* nothing else: reaping happens in the exit-fd callback, as soon as a worker
  exits, through `Process.exitcode` (multiprocess's own waitpid), so the pool
  and multiprocess agree on every exit status and nothing is reaped twice.

State has one owner each: worker state and counters live in the scoreboard;
the pool owns `desired`, the current `generation` and the process handles.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ..workers.fd_passing import send_connection
from ..workers.lifecycle import WorkerState
from ..workers.scoreboard import Scoreboard
from ..workers.worker_loop import BOOT_FAILURE_EXIT, IDLE, READY, Worker
from .autoscaler import Autoscaler, queued_connections
from .child_exits import describe_wait_status
from .child_watch import pidfd_supported
from .fork_failures import ForkFailures
from .worker_process import worker_process_class

log = logging.getLogger(__name__)

BOOT_BACKOFF_FIRST = 0.1
BOOT_BACKOFF_MAX = 10.0
HOUSEKEEPING_INTERVAL = 0.05  # seconds between tick()s while nothing changes
_EXIT_RETRY_DELAYS = (0.0, 0.001, 0.002, 0.004, 0.008, 0.016)


@dataclass
class WorkerHandle:
    """What the supervisor holds for one live worker."""

    index: int
    process: Any
    channel: socket.socket
    exit_fd: int
    owns_exit_fd: bool
    generation: int
    ready: bool = False
    talking: bool = True  # False once its channel reported EOF (the worker is exiting)
    stop_sent: bool = False
    abort_sent_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)


class WorkerPool:
    """The workers of one prefork server, driven from that server's serve loop."""

    def __init__(self, server: Any) -> None:
        import multiprocess

        self.server = server
        self.context = multiprocess.get_context("fork")
        self.process_class = worker_process_class(self.context)
        self.fork_failures = ForkFailures("fork of a worker")
        self.desired = server._sockherd_worker_count()
        self.max_workers = max(server._sockherd_max_workers(), self.desired)
        self.scoreboard = Scoreboard(2 * self.max_workers)  # room for a reload's new generation
        self.generation = 0
        self.workers: dict[int, WorkerHandle] = {}
        # Dispatch mode only: idle workers in the order they became idle (LRU first).
        self.idle: collections.deque[int] = collections.deque()
        self.dispatching = server._sockherd_handoff() == "dispatch"
        self.exit_counts: collections.Counter[str] = collections.Counter()
        self.restarts: collections.Counter[str] = collections.Counter()
        self.boot_failures = 0
        self.next_spawn_at = 0.0
        self.stopping = False
        self.stop_deadline: float | None = None  # set by begin_stop()
        self.orphans_reaped = 0
        self.announced_ready: tuple[int, int] | None = None  # (generation, desired) last logged
        # tick() runs when something changed, else at most every HOUSEKEEPING_INTERVAL: a
        # busy dispatch supervisor wakes once per connection and must not reconcile each time.
        self.tick_due = True
        self.next_tick = 0.0
        self.autoscaler = (
            Autoscaler(
                server.min_spare_workers,
                server.max_spare_workers,
                server.autoscale_interval,
                server.autoscale_cooldown,
            )
            if server.autoscale
            else None
        )

    # --- spawning ------------------------------------------------------------------

    def spawn(self) -> WorkerHandle | None:
        """Fork one worker of the current generation into a free slot."""
        index = self.scoreboard.claim(self.generation)
        if index is None:
            log.warning("no free scoreboard slot: not starting another worker")
            return None
        try:
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as error:
            self._spawn_failed(index, error)
            return None
        process = self.process_class(
            target=self._worker_main,
            args=(index, child_end),
            name=f"sockherd-worker-{index}",
            daemon=True,
        )
        try:
            process.start()
        except OSError as error:
            parent_end.close()
            child_end.close()
            self._spawn_failed(index, error)
            return None
        self.fork_failures.succeeded()
        child_end.close()
        self.scoreboard.slots[index].pid = process.pid
        exit_fd, owns_exit_fd = self._exit_fd(process)
        handle = WorkerHandle(index, process, parent_end, exit_fd, owns_exit_fd, self.generation)
        self.workers[index] = handle
        parent_end.setblocking(False)
        self.server._sockherd_add_wake_source(exit_fd, lambda: self.on_exit(index))
        self.server._sockherd_add_wake_source(parent_end.fileno(), lambda: self.on_message(index))
        return handle

    def _spawn_failed(self, index: int, error: OSError) -> None:
        """A worker could not be forked (EAGAIN, ENOMEM, EMFILE): back off, log once, count."""
        self.scoreboard.release(index)
        failures = self.fork_failures.episode_failures + 1
        delay = min(BOOT_BACKOFF_FIRST * 2 ** (failures - 1), BOOT_BACKOFF_MAX)
        self.next_spawn_at = time.monotonic() + delay
        self.fork_failures.failed(
            error,
            f"retrying in {delay:.1f} s, backing off up to {BOOT_BACKOFF_MAX:.0f} s, "
            "until it works again",
        )

    def _exit_fd(self, process: Any) -> tuple[int, bool]:
        if pidfd_supported():
            try:
                return os.pidfd_open(process.pid), True
            except OSError:
                pass
        return process.sentinel, False

    def _worker_main(self, index: int, channel: socket.socket) -> None:
        """In the child: drop the supervisor's fds, then run the worker loop."""
        os.setpgid(0, 0)  # its own process group: a timeout kill takes its children too
        _die_with_parent()
        for server in self.server._sockherd_group():  # one server, or a group's every one
            server._sockherd_close_supervisor_fds()
            pool = server._sockherd_pool
            for handle in pool.workers.values() if pool is not None else ():
                handle.channel.close()
                if handle.owns_exit_fd:
                    os.close(handle.exit_fd)
            if server is not self.server:
                server.socket.close()  # another server's listener: not this worker's business
        worker = Worker(
            self.server,
            index,
            self.scoreboard,
            channel,
            self.server._sockherd_handoff(),
            self.server.heartbeat_interval,
        )
        status = worker.run()
        raise SystemExit(status)  # multiprocess flushes the streams and exits with it

    # --- events from workers -------------------------------------------------------

    def on_message(self, index: int) -> None:
        """The worker's channel is readable: ready/idle events, or EOF as it exits."""
        handle = self.workers.get(index)
        if handle is None:
            return
        try:
            data = handle.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            handle.talking = False
            self.server._sockherd_remove_wake_source(handle.channel.fileno())
            return
        for event in data:
            if event == READY[0]:
                handle.ready = True
                self.boot_failures = 0
                self.tick_due = True  # a reload may stop an old worker now
                self._announce_readiness()
            if event in (READY[0], IDLE[0]) and self.dispatching and not handle.stop_sent:
                self.idle.append(index)

    def _announce_readiness(self) -> None:
        """Log "N workers ready" once each time the current generation becomes complete."""
        ready = sum(1 for handle in self.current() if handle.ready)
        if ready >= self.desired and self.announced_ready != (self.generation, self.desired):
            self.announced_ready = (self.generation, self.desired)
            log.info("%d worker%s ready", ready, "" if ready == 1 else "s")

    def on_exit(self, index: int) -> None:
        """The worker's exit fd is readable: reap it (once) and free its slot."""
        handle = self.workers.get(index)
        if handle is None:
            return
        code = None
        for delay in _EXIT_RETRY_DELAYS:  # a sentinel pipe can close just before the exit
            code = handle.process.exitcode
            if code is not None:
                break
            time.sleep(delay)
        if code is None:
            return  # not reapable yet; the fd stays registered and fires again
        self.forget(handle, code)

    def forget(self, handle: WorkerHandle, code: int) -> None:
        """Bookkeeping for a reaped worker; the one place a worker leaves the pool."""
        self.tick_due = True  # replace it
        state = self.scoreboard.state(handle.index)
        pid = handle.process.pid
        status = _wait_status(code)
        reason = describe_wait_status(status)
        self.exit_counts[reason] += 1
        self.server._sockherd_remove_wake_source(handle.exit_fd)
        self.server._sockherd_remove_wake_source(handle.channel.fileno())
        if handle.owns_exit_fd:
            os.close(handle.exit_fd)
        handle.channel.close()
        handle.process.close()
        del self.workers[handle.index]
        try:
            self.idle.remove(handle.index)
        except ValueError:
            pass
        lost = None
        if self.scoreboard.request_in_hand(handle.index):
            lost = "timeouts" if handle.abort_sent_at is not None else "aborted"
        self.scoreboard.release(handle.index, lost)
        self.server._sockherd_child_reaped(pid)
        if handle.stop_sent or self.stopping:
            self.restarts["stopped"] += 1  # told to stop, whether or not it had booted
        elif not handle.ready:
            self.boot_failures += 1
            delay = min(BOOT_BACKOFF_FIRST * 2 ** (self.boot_failures - 1), BOOT_BACKOFF_MAX)
            self.next_spawn_at = time.monotonic() + delay
            self.restarts["boot_failure"] += 1
            log.error(
                "worker %d (pid %d) died while booting (%s%s); next start in %.1f s",
                handle.index,
                pid,
                reason,
                ", worker_setup() raised" if code == BOOT_FAILURE_EXIT else "",
                delay,
            )
        elif handle.abort_sent_at is not None:
            self.restarts["timeout"] += 1
        elif state == WorkerState.STOPPING and code == 0:
            self.restarts["recycled"] += 1
            log.info("worker %d (pid %d) recycled", handle.index, pid)
        else:
            self.restarts["crashed"] += 1
            log.warning(
                "worker %d (pid %d) exited on %s while %s, replacing",
                handle.index,
                pid,
                reason.removeprefix("signal ") if reason.startswith("signal") else reason,
                state.name.lower(),
            )

    # --- the reconciliation steps, run after every loop wake-up ---------------------

    def housekeeping_due(self, now: float) -> bool:
        """Whether tick() should run now: something changed, or the interval has passed."""
        return self.tick_due or now >= self.next_tick

    def tick(self) -> None:
        """Enforce timeouts, autoscale if asked to, then bring the pool to its desired shape."""
        self.tick_due = False
        self.next_tick = time.monotonic() + HOUSEKEEPING_INTERVAL
        self.enforce_timeouts()
        if self.stopping:
            return
        if self.autoscaler is not None:
            self.autoscale()
        self.reconcile()

    def autoscale(self) -> None:
        """Let the autoscaler adjust `desired` from idle workers and the listen backlog."""
        assert self.autoscaler is not None
        idle = sum(
            1
            for handle in self.current()
            if handle.ready and self.scoreboard.state(handle.index) == WorkerState.IDLE
        )
        queued = queued_connections(self.server.socket)
        delta = self.autoscaler.decide(time.monotonic(), idle, queued)
        if delta:
            before = self.desired
            if self.scale_by(delta) != before:
                log.info(
                    "autoscale: %d idle, %d queued: %d -> %d workers",
                    idle,
                    queued,
                    before,
                    self.desired,
                )

    def enforce_timeouts(self) -> None:
        """SIGABRT a worker whose heartbeat is too old; SIGKILL its group after kill_grace."""
        now = time.monotonic()
        limit = self.server.worker_timeout
        for handle in list(self.workers.values()):
            slot = self.scoreboard.slots[handle.index]
            if handle.abort_sent_at is not None:
                if now - handle.abort_sent_at > self.server.kill_grace:
                    _kill_group(handle.process.pid, signal.SIGKILL)
                continue
            # The deadline is per request (and per boot): an idle worker is never killed
            # for being idle, even where its accept() cannot wake up to beat.
            busy = slot.state in (WorkerState.BUSY, WorkerState.STARTING)
            if limit and busy and now - slot.heartbeat > limit:
                log.error(
                    "worker %d (pid %d) has been %s for %.1f s (worker_timeout=%s): "
                    "sending SIGABRT for a traceback, SIGKILL in %.1f s",
                    handle.index,
                    handle.process.pid,
                    WorkerState(slot.state).name,
                    now - slot.heartbeat,
                    limit,
                    self.server.kill_grace,
                )
                handle.abort_sent_at = now
                _signal(handle.process.pid, signal.SIGABRT)

    def current(self) -> list[WorkerHandle]:
        """Live workers of the current generation not told to stop."""
        return [
            h for h in self.workers.values() if h.generation == self.generation and not h.stop_sent
        ]

    def reconcile(self) -> None:
        """Spawn or stop workers until the current generation has `desired` of them."""
        current = self.current()
        missing = self.desired - len(current)
        while missing > 0 and time.monotonic() >= self.next_spawn_at:
            if self.spawn() is None:
                break
            missing -= 1
            if self.boot_failures:
                break  # after a boot failure start one at a time, each after the back-off
        if missing < 0:
            # Stop idle workers first (the scoreboard knows), newest slots first.
            surplus = sorted(
                current,
                key=lambda h: (self.scoreboard.state(h.index) != WorkerState.IDLE, -h.index),
            )
            for handle in surplus[:-missing]:
                self.stop_worker(handle)
        # Rolling reload: stop one old worker for each new one that is ready.
        old = [h for h in self.workers.values() if h.generation != self.generation]
        ready_new = sum(1 for h in self.current() if h.ready)
        running_old = [h for h in old if not h.stop_sent]
        excess = ready_new + len(running_old) - self.desired
        for handle in running_old[: max(0, excess)]:
            self.stop_worker(handle)

    def stop_worker(self, handle: WorkerHandle) -> None:
        """Ask one worker to finish its request and exit (SIGTERM)."""
        handle.stop_sent = True
        self.scoreboard.slots[handle.index].stop = 1
        try:
            self.idle.remove(handle.index)
        except ValueError:
            pass
        _signal(handle.process.pid, signal.SIGTERM)

    # --- operator commands -----------------------------------------------------------

    def scale_to(self, count: int) -> int:
        """Set the desired worker count, bounded by min_workers..max_workers; return it."""
        minimum = max(1, self.server.min_workers or 1)
        self.desired = min(max(count, minimum), self.max_workers)
        self.tick_due = True
        log.debug("desired workers: %d", self.desired)
        return self.desired

    def scale_by(self, delta: int) -> int:
        """TTIN/TTOU: one worker more or less, within min_workers..max_workers."""
        return self.scale_to(self.desired + delta)

    def reload(self) -> None:
        """HUP: start a new generation; old workers drain as new ones report ready."""
        self.generation += 1
        self.tick_due = True
        log.info("reloading: starting generation %d", self.generation)

    # --- dispatch mode ---------------------------------------------------------------

    def has_idle_worker(self) -> bool:
        """True if a connection handed over now would be served at once."""
        return bool(self.idle)

    def dispatch(self, request: socket.socket, client_address: Any) -> bool:
        """Hand an accepted connection to the least recently used idle worker."""
        while self.idle:
            index = self.idle.popleft()
            handle = self.workers.get(index)
            if handle is None or handle.stop_sent:
                continue
            if self.scoreboard.state(index) != WorkerState.IDLE:
                continue
            try:
                send_connection(handle.channel, request, client_address)
            except OSError:
                continue  # that worker is going away; try the next one
            return True
        return False

    # --- stopping ------------------------------------------------------------------

    def begin_stop(self, graceful: bool) -> float:
        """The first half of stop_all(), done at once for every pool of a group: mark the
        pool stopping and tell the workers (accept-mode workers then drain the backlog
        themselves; dispatch-mode ones are told after the backlog is handed out).
        Returns the deadline; later calls change nothing and return the same one."""
        if self.stop_deadline is None:
            self.stopping = True
            self.scoreboard.header.draining = 1
            self.stop_deadline = time.monotonic() + (
                self.server.graceful_timeout if graceful else 0
            )
            if not (graceful and self.dispatching):
                self._tell_all_to_stop(graceful)
        return self.stop_deadline

    def _tell_all_to_stop(self, graceful: bool) -> None:
        for handle in list(self.workers.values()):
            handle.stop_sent = True
            self.scoreboard.slots[handle.index].stop = 1
            _signal(handle.process.pid, signal.SIGTERM if graceful else signal.SIGKILL)

    def stop_all(self, graceful: bool) -> None:
        """Stop every worker and reap it; graceful: let requests finish for graceful_timeout
        (counted from begin_stop(), when that came first)."""
        deadline = self.begin_stop(graceful)
        if graceful and self.dispatching:
            self._dispatch_backlog(deadline)
        self._tell_all_to_stop(graceful)
        while self.workers and time.monotonic() < deadline:
            self._wait_for_exits(deadline - time.monotonic())
        for handle in list(self.workers.values()):
            log.warning(
                "worker %d (pid %d) still running after graceful_timeout=%s s: SIGKILL",
                handle.index,
                handle.process.pid,
                self.server.graceful_timeout,
            )
            _kill_group(handle.process.pid, signal.SIGKILL)
        while self.workers:
            self._wait_for_exits(None)

    def _dispatch_backlog(self, deadline: float) -> None:
        """Dispatch mode, stopping: hand the connections already queued to workers first."""
        server = self.server
        queued: collections.deque[tuple[Any, Any]] = collections.deque()
        while _readable(server.socket):
            try:
                request, client_address = server.get_request()
            except OSError:
                break
            if server.verify_request(request, client_address):
                queued.append((request, client_address))
            else:
                server.shutdown_request(request)
        while queued and self.workers and time.monotonic() < deadline:
            while queued and self.idle:
                request, client_address = queued[0]
                if not self.dispatch(request, client_address):
                    break
                queued.popleft()
                server.close_request(request)
            if queued:
                self._wait_for_exits(deadline - time.monotonic(), messages=True)
        for request, client_address in queued:
            log.warning("stopping: no worker left for the connection from %s", client_address)
            server.shutdown_request(request)

    def _wait_for_exits(self, timeout: float | None, messages: bool = False) -> None:
        """Wait for worker exits (and, with `messages`, ready/idle events) and handle them."""
        with selectors.PollSelector() as selector:
            for handle in self.workers.values():
                selector.register(
                    handle.exit_fd, selectors.EVENT_READ, (self.on_exit, handle.index)
                )
                if messages and handle.talking:
                    selector.register(
                        handle.channel, selectors.EVENT_READ, (self.on_message, handle.index)
                    )
            for key, _events in selector.select(timeout):
                callback, index = key.data
                callback(index)

    def close(self) -> None:
        """Release the scoreboard once no worker is left."""
        self.scoreboard.close()

    def supervisor_fds(self) -> list[int]:
        """Fds only the supervisor may hold (closed in each new worker)."""
        fds = [h.channel.fileno() for h in self.workers.values()]
        fds += [h.exit_fd for h in self.workers.values() if h.owns_exit_fd]
        return fds


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _wait_status(exitcode: int) -> int:
    """Rebuild a waitpid() status from multiprocess's exitcode (negative: signal)."""
    if exitcode < 0:
        return -exitcode
    return (exitcode & 0xFF) << 8


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill_group(pid: int, signum: int) -> None:
    """Signal a worker's process group (it leads one), or the worker alone if that fails."""
    try:
        os.killpg(pid, signum)
    except OSError:
        _signal(pid, signum)


_pdeathsig_noted = False


def _die_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies.  Elsewhere workers notice via getppid()."""
    global _pdeathsig_noted
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) == 0:
            return
    except (OSError, AttributeError):
        pass
    if not _pdeathsig_noted:
        _pdeathsig_noted = True
        log.info("PR_SET_PDEATHSIG is not available: workers notice a dead supervisor late")


def reap_orphans(pools: list[WorkerPool]) -> None:
    """PID 1 or subreaper duty: reap every exited child, the pools' workers included.

    A worker reaped here hands its status to multiprocess's Popen, so
    `Process.exitcode` and its pool agree; anything else is an orphan that a
    handler forked and abandoned, and is only counted (in the first pool).
    """
    by_pid = {h.process.pid: (pool, h) for pool in pools for h in pool.workers.values()}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        owner = by_pid.get(pid)
        if owner is None:
            pools[0].orphans_reaped += 1
            pools[0].server._sockherd_child_reaped(pid)
            log.debug("reaped orphan pid %d (%s)", pid, describe_wait_status(status))
            continue
        pool, handle = owner
        code = os.waitstatus_to_exitcode(status)
        handle.process._popen.returncode = code  # the status is ours now: tell multiprocess
        pool.forget(handle, code)
