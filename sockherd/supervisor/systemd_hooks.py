"""What the supervisor tells systemd, and when: readiness, reloads, stops, status, watchdog.

Theory of operation
-------------------
`SystemdHooks` rides on the Arbiter without the Arbiter knowing much about it: it
listens to the supervisor's state table (`SupervisorState.listeners`) and takes
part in the serve loop as loop hooks attached after the Arbiter's, so its
`after_iteration()` runs once the Arbiter's housekeeping of that pass is done.
It exists only when `$NOTIFY_SOCKET` is set (`for_arbiter()`); every message is
one datagram (`systemd_notify.NotifySocket`).

* **READY=1** (with `MAINPID=` and `STATUS=`) once the state is RUNNING *and*
  every pool's current generation has its desired workers booted: the first time
  after start, and again after each reload or upgrade.  Modes without a pool are
  ready as soon as they run.
* **RELOADING=1** with **MONOTONIC_USEC=** (CLOCK_MONOTONIC, as `Type=notify-reload`
  requires to match the reload with the request) on a move to RELOADING (HUP, `ctl
  reload`) or UPGRADING (the in-place upgrade); READY=1 follows as above.
* **STOPPING=1** on a move to DRAINING (TERM, INT, QUIT, `ctl stop`), then every
  `EXTEND_INTERVAL` while the drain lasts **EXTEND_TIMEOUT_USEC=** covering the time
  left to the graceful deadline plus `STOP_MARGIN`: systemd's `TimeoutStopSec` cannot
  kill requests that `graceful_timeout` allows, and a drain that overruns its own
  deadline by more than the margin still ends in systemd's SIGKILL.
* **STATUS=** (state, workers idle/busy or requests in progress, requests per
  second) with every state change, and at most every `STATUS_INTERVAL` when the
  text changed, read from the public snapshot.
* **WATCHDOG=1** when `WATCHDOG_USEC` is ours, every half interval, sent from the
  loop and only while the supervisor makes progress: the pools' housekeeping ran
  since the previous ping, and no worker is still alive `worker_timeout + kill_grace
  + WEDGE_SLACK` into one request (or its boot).  A wedged loop, a supervisor that
  cannot rid itself of a stuck worker, or one stopped with SIGSTOP stops pinging,
  and systemd restarts the service.  The loop's wait is bounded (`wait_bound()`) so
  that a ping is never late for want of a wake-up.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from ..server.loop_hooks import LoopHooks
from .supervisor_state import State
from .systemd_notify import (
    NotifySocket,
    forget_in_child,
    monotonic_usec,
    notify_socket,
    watchdog_interval,
)
from .worker_pool import HOUSEKEEPING_INTERVAL

if TYPE_CHECKING:
    from ..metrics.snapshot import SupervisorSnapshot
    from ..server.base_server import BaseServer
    from .arbiter import Arbiter

log = logging.getLogger(__name__)

EXTEND_INTERVAL = 1.0  # seconds between EXTEND_TIMEOUT_USEC messages while draining
STOP_MARGIN = 5.0  # seconds past the graceful deadline systemd is asked to wait
STATUS_INTERVAL = 1.0  # at most one STATUS= of its own per this many seconds
WEDGE_SLACK = 1.0  # seconds past worker_timeout + kill_grace before a worker counts as wedged


class SystemdHooks(LoopHooks):
    """The notify protocol's side of one Arbiter (see the module's docstring)."""

    def __init__(self, arbiter: Arbiter, sender: NotifySocket, watchdog: float) -> None:
        self.arbiter = arbiter
        self.sender = sender
        self.watchdog = watchdog  # WATCHDOG_USEC in seconds; 0: no watchdog
        self.ready_due = False  # RUNNING, READY=1 not yet sent for this generation
        self.last_ping = float("-inf")
        self.withheld: str | None = None  # why pings stopped (logged once)
        self.next_extend = 0.0
        self.next_status = 0.0
        self.status = ""
        self.counted: tuple[float, int] | None = None  # (when, requests finished) last status
        self.rate = 0.0
        self.failures = 0  # exceptions caught (only the first is logged)
        arbiter.state.listeners.append(self.state_changed)

    @classmethod
    def for_arbiter(cls, arbiter: Arbiter) -> SystemdHooks | None:
        """Hooks for `arbiter` when `$NOTIFY_SOCKET` is set, else None."""
        sender = notify_socket()
        if sender is None:
            return None
        watchdog = watchdog_interval()
        log.debug("systemd notify: %s, watchdog %s s", sender.printable_address, watchdog or "off")
        return cls(arbiter, sender, watchdog)

    @property
    def ping_interval(self) -> float:
        """Seconds between watchdog pings: half of WATCHDOG_USEC (0: no watchdog)."""
        return self.watchdog / 2

    def wait_bound(self, poll_interval: float) -> float:
        """The longest the loop may wait: short enough for a ping (a quarter of the
        watchdog's timeout, so a ping is at most 3/4 of it apart) and for the drain's
        EXTEND_TIMEOUT_USEC messages."""
        bound = min(poll_interval, EXTEND_INTERVAL)
        return min(bound, self.ping_interval / 2) if self.watchdog else bound

    # --- the state table's listener ----------------------------------------------------

    def state_changed(self, old: State, new: State) -> None:
        """Tell systemd about a move of the supervisor's state (never raises: it runs
        inside `SupervisorState.move()`, and systemd must not break the Arbiter)."""
        try:
            self._state_changed(old, new)
        except Exception:
            self._failed("a state change")

    def _state_changed(self, old: State, new: State) -> None:
        self.ready_due = new is State.RUNNING
        if new in (State.RELOADING, State.UPGRADING):
            self.sender.send(
                RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS=self._status(new.value)
            )
        elif new is State.DRAINING or (new is State.STOPPED and old is not State.DRAINING):
            self.sender.send(STOPPING=1, STATUS=self._status(new.value))
            self.next_extend = 0.0
        elif new is State.STOPPED:
            self.sender.send(STATUS="stopped")
        # RUNNING: READY=1 waits for the pools' current generation (after_iteration).

    # --- the loop hooks --------------------------------------------------------------

    def after_iteration(self, server: BaseServer) -> None:
        """After the Arbiter's housekeeping: READY, drain extensions, status, watchdog
        (never raises: a failure here is logged and the loop goes on, without a ping)."""
        try:
            self._after_iteration()
        except Exception:
            self._failed("the loop's report")

    def _failed(self, what: str) -> None:
        if not self.failures:
            log.exception("systemd notify: %s failed; the supervisor goes on", what)
        self.failures += 1

    def _after_iteration(self) -> None:
        now = time.monotonic()
        if self.ready_due and self._generation_ready():
            self.ready_due = False
            self.sender.send(
                READY=1, MAINPID=os.getpid(), STATUS=self._status(self.arbiter.state.current.value)
            )
        if self.arbiter.state.is_(State.DRAINING) and now >= self.next_extend:
            self.next_extend = now + EXTEND_INTERVAL
            deadline = self.arbiter.drain_deadline
            left = max(0.0, deadline - now) if deadline is not None else 0.0
            self.sender.send(EXTEND_TIMEOUT_USEC=int((left + STOP_MARGIN) * 1e6))
        if now >= self.next_status:
            self.next_status = now + STATUS_INTERVAL
            previous = self.status
            text = self._status(self.arbiter.state.current.value)
            if text != previous:
                self.sender.send(STATUS=text)
        if self.watchdog and now - self.last_ping >= self.ping_interval:
            self._ping(now)

    def in_forked_child(self, server: BaseServer) -> None:
        """A worker or a request child: no socket, no NOTIFY_SOCKET/WATCHDOG_* for it."""
        forget_in_child(self.sender, os.environ)

    def loop_ending(self, server: BaseServer) -> None:
        """The loop is over: stop listening to the state table, close the socket, detach
        (the hooks serve one loop; `attach_systemd_hooks()` makes new ones for the next)."""
        if self.state_changed in self.arbiter.state.listeners:
            self.arbiter.state.listeners.remove(self.state_changed)
        self.sender.close()
        server.detach_loop_hooks(self)

    # --- the watchdog ------------------------------------------------------------------

    def _ping(self, now: float) -> None:
        stuck = self.no_progress(now)
        if stuck is not None:
            if self.withheld is None:
                log.error("systemd watchdog: not pinging: %s", stuck)
            self.withheld = stuck
            return
        if self.withheld is not None:
            log.warning("systemd watchdog: pinging again (%s no longer holds)", self.withheld)
            self.withheld = None
        if self.sender.send(WATCHDOG=1):
            self.last_ping = now

    def no_progress(self, now: float) -> str | None:
        """Why the supervisor is not making progress, or None when it is: a pool whose
        housekeeping has not run since the previous ping, or a worker still alive
        `worker_timeout + kill_grace + WEDGE_SLACK` into one request or its boot."""
        for server, pool in self.arbiter.pools.items():
            last_tick = pool.next_tick - HOUSEKEEPING_INTERVAL
            if last_tick < self.last_ping:
                return f"the pool of {server.server_address!r} has not been looked after"
            limit = pool.settings.worker_timeout
            if not limit:
                continue
            bound = limit + pool.settings.kill_grace + WEDGE_SLACK
            for worker in pool.snapshot().workers:
                if worker.state in ("busy", "starting") and worker.heartbeat_age > bound:
                    return (
                        f"worker {worker.slot} (pid {worker.pid}) has been {worker.state} for "
                        f"{worker.heartbeat_age:.1f} s and is still alive, past worker_timeout + "
                        f"kill_grace ({limit + pool.settings.kill_grace:g} s)"
                    )
        return None

    # --- what to say -------------------------------------------------------------------

    def _generation_ready(self) -> bool:
        """Every pool has its desired workers of the current generation booted (asked of
        the pools themselves: cheap enough for every pass while READY=1 is due)."""
        return all(pool.ready_count() >= pool.desired for pool in self.arbiter.pools.values())

    def _status(self, state: str) -> str:
        """One line for `systemctl status`: the state, the workers, requests per second."""
        snapshot = self.arbiter.snapshot()
        self.status = describe(snapshot, state, self._rate(snapshot))
        return self.status

    def _rate(self, snapshot: SupervisorSnapshot) -> float:
        """Requests finished per second since the last reading at least half a
        STATUS_INTERVAL ago (the previous rate in between)."""
        now = time.monotonic()
        finished = sum(sum(server.requests.values()) for server in snapshot.servers)
        if self.counted is None:
            self.counted = (now, finished)
        elif now - self.counted[0] >= STATUS_INTERVAL / 2:
            self.rate = (finished - self.counted[1]) / (now - self.counted[0])
            self.counted = (now, finished)
        return self.rate


def attach_systemd_hooks(arbiter: Arbiter, poll_interval: float) -> float:
    """When `$NOTIFY_SOCKET` is set, attach `SystemdHooks` to the Arbiter's loop, after the
    Arbiter itself (they report once its housekeeping has run); return the loop's wait
    bound (`poll_interval`, shortened for the watchdog and the drain's messages)."""
    hooks = SystemdHooks.for_arbiter(arbiter)
    if hooks is None:
        return poll_interval
    arbiter.host.attach_loop_hooks(hooks)
    return hooks.wait_bound(poll_interval)


def describe(snapshot: SupervisorSnapshot, state: str, rate: float) -> str:
    """The STATUS= text: "running: 4 workers (3 idle, 1 busy), 812.5 req/s"; without a
    pool "running: 2 requests in progress, 3.0 req/s"; draining adds the time left."""
    pools = [server.pool for server in snapshot.servers if server.pool is not None]
    if pools:
        workers = [w for pool in pools for w in pool.workers]
        idle = sum(1 for w in workers if w.state == "idle")
        busy = sum(1 for w in workers if w.state == "busy")
        count = len(workers)
        load = f"{count} worker{'' if count == 1 else 's'} ({idle} idle, {busy} busy)"
    else:
        load = (
            f"{snapshot.in_progress} request{'' if snapshot.in_progress == 1 else 's'} in progress"
        )
    text = f"{state}: {load}, {rate:.1f} req/s"
    if state == "draining" and snapshot.drain_seconds_left is not None:
        text += f", {snapshot.drain_seconds_left:.0f} s to the graceful deadline"
    return text
