"""The Arbiter: the one object that owns the parent process.

Theory of operation (after gunicorn's arbiter)
----------------------------------------------
`sockherd serve` runs every mode (sync, thread, fork, prefork; one listener or
several; a factory's server) under one Arbiter, and a `Prefork*Server` that a
program serves itself builds one too.  The Arbiter does not run a loop of its
own: it attaches itself to the first server as its loop hooks
(`BaseServer.attach_loop_hooks`), so the server's ordinary `serve_forever()` is the one loop
of the process, and the other servers join that loop.  What it owns:

* its state, a table (`supervisor_state`): starting -> running -> draining ->
  stopped, with reloading in between;
* signals: handlers only record the name and write to a self-pipe
  (`signals.SignalRelay`); the loop wakes and `handle_<name>()` runs;
* the child table and its one reaper (`reaper`) for workers and orphans;
* one `WorkerPool` per prefork server, ticked from the loop after every pass --
  whatever the servers' `service_actions()` do, since the hooks run after it;
* the control socket (`control`) and the metrics endpoint (`metrics.service`),
  both wake sources of the same loop, so both keep answering while it drains;
* the public snapshot (`snapshot()`), the only thing reports read.

Draining happens inside the loop: TERM, INT, `ctl stop` or a `shutdown()` call
stop the listeners being served, let the requests in progress finish (prefork
pools drain their backlog too) within `graceful_timeout`, and only then stop
the loop.  QUIT kills the workers and stops at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from ..metrics.service import MetricsService
from ..metrics.snapshot import SupervisorSnapshot, requests_in_progress, server_label
from ..server.base_server import BaseServer
from ..server.loop_hooks import LoopHooks
from .arbiter_snapshot import arbiter_snapshot
from .commands import control_command
from .control import ControlSocket
from .pool_settings import PoolServer
from .reaper import ChildReaper
from .signals import ORPHAN_SIGNALS, SignalRelay
from .subreaper import take_orphan_duty
from .supervisor_state import State, SupervisorState
from .systemd_hooks import attach_systemd_hooks
from .upgrade import DEFAULT_UPGRADE_TIMEOUT, Upgrader, take_handover
from .worker_pool import WorkerPool

log = logging.getLogger(__name__)

DEFAULT_GRACEFUL_TIMEOUT = 30.0


class Arbiter(LoopHooks):
    """Supervises `servers` (bound and activated; the first one's loop serves them all).

    `control_socket`: path of the control socket, or None.  `graceful_timeout`: how
    long a drain may take (None: the largest of the prefork servers' settings, else
    30 s).  `install_signals`: take the operator signals (None: when the loop runs in
    the main thread).  Metrics are served when the first server has `metrics_address`.
    `upgradable`: this process is `sockherd serve`, which an in-place upgrade may exec
    again (`upgrade_timeout`: how long its new workers get to be ready).
    """

    def __init__(
        self,
        servers: Sequence[BaseServer],
        *,
        control_socket: str | None = None,
        graceful_timeout: float | None = None,
        install_signals: bool | None = None,
        upgrade_timeout: float | None = None,
        upgradable: bool = False,
    ) -> None:
        if not servers:
            raise ValueError("an Arbiter needs at least one server")
        self.servers = tuple(servers)
        self.host = self.servers[0]
        self.state = SupervisorState()
        self.started = time.monotonic()
        self.pid = os.getpid()
        self.control_path = control_socket
        prefork = [s for s in self.servers if isinstance(s, PoolServer)]
        if graceful_timeout is None:
            timeouts = [s.graceful_timeout for s in prefork]
            graceful_timeout = max(timeouts) if timeouts else DEFAULT_GRACEFUL_TIMEOUT
        self.graceful_timeout = graceful_timeout
        self.signals = SignalRelay()
        self._install_signals = install_signals
        self.metrics = MetricsService.settings_of(self.host, self.snapshot)
        self.reaper: ChildReaper | None = None
        self.pools: dict[BaseServer, WorkerPool] = {}
        self.control: ControlSocket | None = None
        self.orphan_duty = False
        self.reap_due = False
        self.drain_deadline: float | None = None
        self.upgrader = Upgrader(self, upgrade_timeout or DEFAULT_UPGRADE_TIMEOUT, upgradable)
        self.handover = take_handover()  # this image follows an in-place upgrade
        if self.handover is not None:
            self.started = float(self.handover["started"])
            if self.metrics is not None:
                self.metrics.keep_user_files = True

    # --- running ------------------------------------------------------------------------

    def install_signals(self) -> bool:
        """Take the operator signals now (the command does so before the servers are built,
        so an early TERM is not lost); False outside the main thread."""
        return self.signals.install()

    def run(self, poll_interval: float = 0.5) -> None:
        """Serve until stopped (drained, or QUIT); the servers stay open for the caller."""
        for guest in self.servers[1:]:
            guest.join_loop(self.host)
        self.host.attach_loop_hooks(self)
        poll_interval = attach_systemd_hooks(self, poll_interval)  # with $NOTIFY_SOCKET
        try:
            self.host.serve_forever(poll_interval)
        finally:
            self.host.detach_loop_hooks(self)

    def close(self) -> None:
        """Give back the signal handlers and the signal pipe (after the servers closed)."""
        self.signals.close()

    # --- the loop hooks -----------------------------------------------------------------

    def loop_started(self, server: BaseServer) -> None:
        """Signals, reaper, pools, control socket and metrics, then RUNNING."""
        in_main_thread = self.signals.installed
        if self._install_signals is not False and not in_main_thread:
            in_main_thread = self.signals.install()
        server.add_wake_source(self.signals.pipe.read_fd, self._dispatch_signals)
        self.reaper = ChildReaper(
            server.add_wake_source, server.remove_wake_source, self._child_gone
        )
        prefork = [s for s in self.servers if isinstance(s, PoolServer)]
        forking = any(hasattr(s, "active_children") for s in self.servers)
        if prefork and not forking:
            self.orphan_duty = take_orphan_duty(prefork[0].reap_orphans, in_main_thread)
            if self.orphan_duty:
                self.signals.install(ORPHAN_SIGNALS)
        if self.handover is None:
            self._dispatch_signals()  # a TERM that came before the loop: stop before forking
            if self.state.is_(State.STOPPED):
                server.shutdown()
                return
        else:
            self.state.move(State.UPGRADING)
        carried = self.handover["pools"] if self.handover is not None else {}
        for each in prefork:
            carried_pool = carried.pop(server_label(each), None)
            self.pools[each] = each.start_pool(self.reaper, self._child_gone, carried_pool)
        if self.control_path:
            self.control = ControlSocket(
                self.control_path,
                lambda line: control_command(self, line),
                server.add_wake_source,
                server.remove_wake_source,
            )
        if self.metrics is not None:
            self.metrics.loop_started(server)
        if self.handover is not None:
            self.upgrader.resume(self.handover, carried)
            self._dispatch_signals()  # a signal held back across exec
        if self.state.is_(State.STARTING):
            self.state.move(State.RUNNING)
        self.after_iteration(server)

    def after_iteration(self, server: BaseServer) -> None:
        """Housekeeping after every pass: pools, clients' deadlines, the state."""
        now = time.monotonic()
        if self.reap_due and self.reaper is not None:
            self.reap_due = False
            self.reaper.reap_any()
        for pool in self.pools.values():
            if pool.housekeeping_due(now):
                pool.tick(now)
        if self.control is not None:
            self.control.expire_slow_clients()
        if self.metrics is not None:
            self.metrics.after_iteration(server)
        if self.state.is_(State.RELOADING) and not any(p.reloading for p in self.pools.values()):
            self.state.move(State.RUNNING)
            log.info("reload done: generation %d serves", self.generation)
        self.upgrader.after_iteration(now)
        self._finish_if_drained(now)

    def next_wake(self, server: BaseServer) -> float | None:
        """The earliest deadline of the pools (a request about to become slow)."""
        wakes = [w for w in (pool.next_wake() for pool in self.pools.values()) if w is not None]
        return min(wakes) if wakes else None

    def accepting(self, server: BaseServer) -> bool:
        """Prefork: only dispatch pools with an idle worker; nobody new while draining."""
        pool = self.pools.get(server)
        if pool is not None:
            return pool.accepting()
        return not self.state.is_(State.DRAINING, State.STOPPED)

    def stop_requested(self, server: BaseServer) -> bool:
        """`shutdown()` drains first: the loop ends once the Arbiter is STOPPED."""
        if not self.state.is_(State.STOPPED, State.DRAINING):
            self.begin_drain(graceful=True, why="shutdown() called")
        return self.state.is_(State.STOPPED)

    def loop_ending(self, server: BaseServer) -> None:
        """Whatever is left (the loop ended early): kill and reap it; close what we own."""
        try:
            for pool in self.pools.values():
                if pool.workers:
                    pool.kill_and_reap_all()
                pool.close()
        finally:
            self.pools = {}
            if self.control is not None:
                self.control.close()
                self.control = None
            if self.metrics is not None:
                self.metrics.loop_ending(server)
            server.remove_wake_source(self.signals.pipe.read_fd)
            if self._install_signals is not True and self.signals.installed:
                self.signals.restore()  # a program's own server: give its handlers back
            if not self.state.is_(State.STOPPED):
                self.state.move(State.STOPPED)

    def in_forked_child(self, server: BaseServer) -> None:
        """A worker or a request child: close every fd the supervisor holds."""
        if self.control is not None:
            self.control.close_in_worker()
            self.control = None
        if self.metrics is not None:
            self.metrics.in_forked_child(server)
        if self.reaper is not None:
            self.reaper.close_in_child()
        if isinstance(server, PoolServer):  # a worker; a request child keeps the handlers
            self.signals.close_in_child()
        for pool in self.pools.values():
            pool.scoreboard.close_fd()
            for handle in pool.workers.values():
                handle.channel.close()
        self.pools = {}

    def child_reaped(self, server: BaseServer, pid: int) -> None:
        """A request child of a forking server was reaped."""
        self._child_gone(pid)

    # --- draining -----------------------------------------------------------------------

    def begin_drain(self, graceful: bool, why: str) -> None:
        """Stop serving the listeners; let requests in progress finish (graceful) within
        graceful_timeout, or kill the workers (not graceful).  Idempotent."""
        now = time.monotonic()
        if self.state.is_(State.STOPPED):
            return
        if self.state.is_(State.DRAINING):
            if not graceful:  # QUIT while draining: stop now, whatever is in flight
                self.drain_deadline = now
                for pool in self.pools.values():
                    pool.begin_stop(graceful=False, now=now)
                self._finish_if_drained(now)
            return
        log.info("%s: %s", why, "stopping gracefully" if graceful else "stopping now")
        self.state.move(State.DRAINING)
        self.drain_deadline = now + (self.graceful_timeout if graceful else 0.0)
        for pool in self.pools.values():
            pool.begin_stop(graceful, now)
        waiting = self.in_progress()
        if waiting:
            log.info("waiting for %d request%s in progress", waiting, "" if waiting == 1 else "s")
        self._finish_if_drained(now)

    def _finish_if_drained(self, now: float) -> None:
        if self.state.is_(State.DRAINING) and self._drained(now):
            self.state.move(State.STOPPED)
            self.host.shutdown()  # from the serving thread: the loop ends after this pass

    def _drained(self, now: float) -> bool:
        """Every pool stopped and no request in progress (or the deadline passed for the
        non-prefork servers, whose children server_close() then takes care of)."""
        if any(not pool.stopped for pool in self.pools.values()):
            return False
        others = [s for s in self.servers if s not in self.pools]
        if not any(requests_in_progress(s) for s in others):
            return True
        return self.drain_deadline is not None and now >= self.drain_deadline

    def in_progress(self) -> int:
        """Requests in progress over every server."""
        total = sum(pool.snapshot().in_progress for pool in self.pools.values())
        return total + sum(requests_in_progress(s) for s in self.servers if s not in self.pools)

    # --- signals, dispatched by name from the loop -------------------------------------

    def _dispatch_signals(self) -> None:
        for name in self.signals.pending():
            try:
                getattr(self, "handle_" + name.lower())()
            except Exception:  # one failing action (a log file gone) must not end the loop
                log.exception("%s: handling it failed; the supervisor goes on", name)

    def handle_sigterm(self) -> None:
        """Graceful stop: requests in progress finish (within graceful_timeout)."""
        self._stop_signal("SIGTERM", graceful=True)

    def handle_sigint(self) -> None:
        """Graceful stop, as SIGTERM."""
        self._stop_signal("SIGINT", graceful=True)

    def handle_sigquit(self) -> None:
        """Immediate stop: workers are killed."""
        self._stop_signal("SIGQUIT", graceful=False)

    def _stop_signal(self, name: str, graceful: bool) -> None:
        if self.state.is_(State.STARTING):
            log.info("%s before serving: stopping", name)
            self.state.move(State.STOPPED)
        elif self.state.is_(State.DRAINING, State.STOPPED) and graceful:
            log.info("%s: already stopping", name)
        else:
            self.begin_drain(graceful, name)

    def handle_sighup(self) -> None:
        """Rolling reload: a new generation of workers replaces the old one."""
        self.reload()

    def handle_sigttin(self) -> None:
        """One worker more (up to max_workers), in each pool."""
        self._scale_signal("SIGTTIN", +1)

    def handle_sigttou(self) -> None:
        """One worker less (down to min_workers), in each pool."""
        self._scale_signal("SIGTTOU", -1)

    def _scale_signal(self, name: str, delta: int) -> None:
        if not self.pools:
            log.info("%s: no worker pool to scale; ignored", name)
        for pool in self.pools.values():
            log.info("%s: %d workers wanted", name, pool.scale_by(delta))

    def handle_sigusr1(self) -> None:
        """Reopen the log files of logging's FileHandlers (after log rotation)."""
        from .log_files import reopen_log_files

        reopen_log_files()

    def handle_sigusr2(self) -> None:
        """In-place upgrade: exec the new code, keeping the pid, sockets and workers."""
        self.upgrader.request("SIGUSR2")

    def handle_sigchld(self) -> None:
        """A child exited: with orphan duty, reap after this pass."""
        self.reap_due = True

    # --- operator commands (signals and the control socket) ----------------------------

    def reload(self) -> bool:
        """Start a new generation in every pool; False when there is no pool or it stops."""
        if not self.pools:
            log.info("reload: no worker pool to reload; ignored")
            return False
        if self.state.is_(State.DRAINING, State.STOPPED):
            log.info("reload: the supervisor is stopping; ignored")
            return False
        if self.state.is_(State.UPGRADING):
            log.info("reload: an upgrade is in progress; ignored")
            return False
        for pool in self.pools.values():
            pool.reload()
        self.state.move(State.RELOADING)
        return True

    @property
    def generation(self) -> int:
        """The current generation (of the first pool; 0 without pools)."""
        return next((pool.generation for pool in self.pools.values()), 0)

    def snapshot(self) -> SupervisorSnapshot:
        """The public snapshot of this process (see `metrics.snapshot`)."""
        return arbiter_snapshot(self)

    def pools_by_label(self) -> list[tuple[str, WorkerPool]]:
        """Each pool with its server's label (how an upgrade matches them up)."""
        return [(server_label(server), pool) for server, pool in self.pools.items()]

    def _child_gone(self, pid: int) -> None:
        """Every reaped child passes here: prometheus_client's files of it are folded."""
        if self.metrics is not None:
            self.metrics.child_reaped(self.host, pid)


def supervising(server: BaseServer) -> Arbiter | None:
    """The Arbiter attached to `server`'s loop, if any."""
    for hooks in server.loop_hooks:
        if isinstance(hooks, Arbiter):
            return hooks
    return None
