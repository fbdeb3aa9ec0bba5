"""PreforkMixIn: the same handlers and hooks, served by a supervised pool of worker processes.

The server process is the supervisor: it binds and keeps the listening socket,
runs the usual serve loop (woken by worker exits, worker messages, signals and
`shutdown()`), and never runs request code.  Workers (see `workers.worker_loop`)
are forked by `WorkerPool` with multiprocess's fork context.

Configuration is class attributes, as everywhere in socketserver, or the same
names as keyword arguments of the Prefork*Server constructors:

==================== ======= ====================================================
workers              None    worker processes; None means os.cpu_count()
handoff              accept  "accept" (workers block in accept) or "dispatch"
                             (the supervisor accepts and passes each connection
                             to the least recently used idle worker)
max_requests         0       recycle a worker after this many requests (0: never)
max_requests_jitter  0       plus a random 0..jitter, so workers do not recycle together
max_worker_memory    None    recycle a worker whose resident memory exceeds this many
                             bytes after a request
worker_timeout       30      seconds one request (or a worker's boot) may take before
                             SIGABRT (traceback in the log) and, kill_grace later, SIGKILL
kill_grace           2       seconds between SIGABRT and SIGKILL
graceful_timeout     30      seconds a stopping server waits for requests in progress
min_workers          1       lower bound for TTOU
max_workers          None    upper bound for TTIN; None means 4 * os.cpu_count()
heartbeat_interval   0.5     how often an idle worker wakes to beat and check for a stop
                             request (accept mode uses SO_RCVTIMEO on the listener; where
                             accept() ignores it, idle workers see a stop only when a
                             connection arrives or graceful_timeout expires)
autoscale            False   adjust the worker count between min_workers and
                             max_workers on saturation (see `autoscaler`)
min_spare_workers    1       autoscale: add workers when fewer are idle
max_spare_workers    4       autoscale: remove one when more stay idle a cool-down
autoscale_interval   1       autoscale: seconds between scale-up steps (1, 2, 4, ...)
autoscale_cooldown   10      autoscale: seconds of surplus before each scale-down step
control_socket       None    path of a Unix control socket (mode 0600) answering
                             status, scale N, reload, stop (see `control`)
metrics_basic_auth   None    (user, password) that metrics scrapes must present
metrics_tls_certfile None    serve the metrics over HTTPS with this PEM certificate
metrics_tls_keyfile  None    ... and this PEM key (see `metrics.endpoint_security`)
reap_orphans         None    reap children a handler forked and abandoned: as PID 1,
                             or as a Linux child subreaper.  None: when
                             serve_forever() runs in the main thread (a dedicated
                             supervisor process); True/False: always/never
read_timeout         None    (TCPServer's, settable here too) seconds a client gets to
                             send each request before the worker cuts it off; stream
                             servers only.  Accept mode: the worker's get_request()
                             applies it; dispatch mode: the worker, on each connection
                             it receives (see `read_deadline`)
==================== ======= ====================================================

Lifecycle: `serve_forever()` starts the workers and supervises them until
`shutdown()` (or SIGTERM/SIGINT in the main thread), then stops them
gracefully before returning; `server_close()` closes the socket as usual.
Signals, when `serve_forever()` runs in the main thread: TERM/INT graceful
stop, QUIT immediate stop, HUP rolling reload (new workers report ready before
old ones drain), TTIN/TTOU one worker more/less, USR1 reopen log files.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from typing import Any

from ..metrics.collector import server_label
from ..workers.worker_loop import set_listener_heartbeat
from .control import ControlSocket
from .read_deadline import check_read_timeout
from .signals import ORPHAN_SIGNALS, SignalRelay
from .socket_servers import TCPServer, UDPServer
from .worker_pool import WorkerPool, reap_orphans

log = logging.getLogger(__name__)

SETTINGS = (
    "workers",
    "handoff",
    "max_requests",
    "max_requests_jitter",
    "max_worker_memory",
    "worker_timeout",
    "kill_grace",
    "graceful_timeout",
    "min_workers",
    "max_workers",
    "heartbeat_interval",
    "reap_orphans",
    "control_socket",
    "autoscale",
    "min_spare_workers",
    "max_spare_workers",
    "autoscale_interval",
    "autoscale_cooldown",
    "read_timeout",
    "metrics_basic_auth",
    "metrics_tls_certfile",
    "metrics_tls_keyfile",
)
HANDOFFS = ("accept", "dispatch")


class PreforkMixIn:
    """Mix-in class to handle requests in a supervised pool of pre-forked workers."""

    workers: int | None = None
    handoff = "accept"
    max_requests = 0
    max_requests_jitter = 0
    max_worker_memory: int | None = None
    worker_timeout: float | None = 30.0
    kill_grace = 2.0
    graceful_timeout = 30.0
    min_workers = 1
    max_workers: int | None = None
    heartbeat_interval = 0.5
    reap_orphans: bool | None = None
    control_socket: str | None = None
    autoscale = False
    min_spare_workers = 1
    max_spare_workers = 4
    autoscale_interval = 1.0
    autoscale_cooldown = 10.0

    # sockherd state, created lazily (no mix-in __init__).
    _sockherd_pool: WorkerPool | None = None
    _sockherd_signals: SignalRelay | None = None
    _sockherd_quick_stop = False
    _sockherd_orphan_duty = False
    _sockherd_reap_due = False  # SIGCHLD arrived: reap orphans at the next service_actions()
    _sockherd_control: ControlSocket | None = None
    _sockherd_wrapped_refused = 0

    # --- hooks ------------------------------------------------------------------------

    def worker_setup(self) -> None:
        """Called in each new worker before it serves.  May be overridden.

        An exception here counts as a boot failure: the worker exits and the
        supervisor starts the next one after an exponential back-off.
        """

    # --- the supervisor's loop --------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start the workers and supervise them until shutdown(); stop them before returning.

        In a group (`server_group`), the first server also starts, signals and stops
        the pools of the others.
        """
        group = self._sockherd_group()  # type: ignore[attr-defined]
        for server in group:
            server._sockherd_validate()
        wakeup = self._sockherd_wakeup_pipe()  # type: ignore[attr-defined]
        relay = self._sockherd_signals = SignalRelay(wakeup.wake if wakeup else lambda: None)
        try:  # from here on, whatever was installed is restored, even if a signal interrupts
            in_main_thread = relay.install()
            self._sockherd_orphan_duty = self._sockherd_take_orphan_duty(in_main_thread)
            if self._sockherd_orphan_duty:
                relay.install(ORPHAN_SIGNALS)
            for server in group:
                server._sockherd_start_pool()
            if self.control_socket:
                self._sockherd_control = ControlSocket(
                    self.control_socket,
                    self._sockherd_control_command,
                    self._sockherd_add_wake_source,  # type: ignore[attr-defined]
                    self._sockherd_remove_wake_source,  # type: ignore[attr-defined]
                )
            for server in group:
                server._sockherd_pool.reconcile()
            super().serve_forever(poll_interval)  # type: ignore[misc]
        finally:
            if self._sockherd_control is not None:
                self._sockherd_control.close()
                self._sockherd_control = None
            relay.restore()
            self._sockherd_signals = None
            for server in group:
                server._sockherd_end_pool()

    def _sockherd_start_pool(self) -> None:
        self._sockherd_quick_stop = False
        self._sockherd_pool = WorkerPool(self)
        if self._sockherd_handoff() == "accept":
            set_listener_heartbeat(self.socket, self.heartbeat_interval)  # type: ignore[attr-defined]

    def _sockherd_end_pool(self) -> None:
        pool = self._sockherd_pool
        if pool is None:
            return
        if pool.workers:
            pool.stop_all(graceful=False)
        pool.close()
        self._sockherd_pool = None

    def _sockherd_pools(self) -> list[WorkerPool]:
        """The running pools of this server's group (just its own pool when alone)."""
        group = self._sockherd_group()  # type: ignore[attr-defined]
        return [server._sockherd_pool for server in group if server._sockherd_pool is not None]

    def _sockherd_before_loop_exit(self) -> None:
        graceful = not self._sockherd_quick_stop
        for each in self._sockherd_pools():  # a group's pools all start draining now
            each.begin_stop(graceful)
        pool = self._sockherd_pool
        if pool is not None:
            pool.stop_all(graceful)

    def service_actions(self) -> None:
        """Handle the signals received, then let the pool reconcile (when something changed,
        else every HOUSEKEEPING_INTERVAL seconds).  May be extended."""
        relay = self._sockherd_signals
        if relay is not None:
            for name in relay.pending():
                getattr(self, "handle_" + name.lower())()
        pool = self._sockherd_pool
        if pool is not None and (
            self._sockherd_reap_due or pool.housekeeping_due(time.monotonic())
        ):
            if self._sockherd_orphan_duty:
                self._sockherd_reap_due = False
                reap_orphans(self._sockherd_pools())  # one waitpid(WNOHANG) if none exited
            pool.tick()
        if self._sockherd_control is not None:
            self._sockherd_control.expire_slow_clients()

    def handle_request(self) -> None:
        """Not available: a prefork server serves through its pool, in serve_forever()."""
        raise RuntimeError(
            f"{type(self).__name__} serves through its worker pool: call serve_forever(), "
            "not handle_request()"
        )

    def process_request(self, request: Any, client_address: Any) -> None:
        """Dispatch mode, in the supervisor: pass the connection to an idle worker.

        Only a plain socket can be passed (its fd travels, not the Python object): a
        connection that get_request() wrapped (TLS) is refused with an error, since
        the worker would see the raw bytes; wrap in accept mode instead.
        """
        pool = self._sockherd_pool
        if type(request) is not socket.socket:
            if not self._sockherd_wrapped_refused:
                log.error(
                    "dispatch hand-off can pass only plain sockets, but get_request() returned "
                    "a %s; refusing such connections. Use handoff='accept' so that workers call "
                    "get_request() (and wrap the connection) themselves",
                    type(request).__name__,
                )
            self._sockherd_wrapped_refused += 1
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        if pool is None or not pool.dispatch(request, client_address):
            log.warning("no worker could take the connection from %s; closing it", client_address)
        self.close_request(request)  # type: ignore[attr-defined]

    # --- signals (called from the loop, not in signal context) ---------------------

    def handle_sigterm(self) -> None:
        """Graceful stop: requests in progress finish (within graceful_timeout)."""
        log.info("SIGTERM: stopping gracefully")
        self.shutdown()  # type: ignore[attr-defined]

    def handle_sigint(self) -> None:
        """Graceful stop, as SIGTERM."""
        log.info("SIGINT: stopping gracefully")
        self.shutdown()  # type: ignore[attr-defined]

    def handle_sigquit(self) -> None:
        """Immediate stop: workers are killed."""
        log.info("SIGQUIT: stopping now")
        for server in self._sockherd_group():  # type: ignore[attr-defined]
            server._sockherd_quick_stop = True
        self.shutdown()  # type: ignore[attr-defined]

    def handle_sigchld(self) -> None:
        """A child exited: reaping happens right after, in service_actions()."""
        self._sockherd_reap_due = True

    def handle_sighup(self) -> None:
        """Rolling reload: a new generation of workers replaces the old one."""
        for pool in self._sockherd_pools():
            pool.reload()

    def handle_sigttin(self) -> None:
        """One worker more (up to max_workers), in each pool of the group."""
        for pool in self._sockherd_pools():
            log.info("SIGTTIN: %d workers wanted", pool.scale_by(+1))

    def handle_sigttou(self) -> None:
        """One worker less (down to min_workers), in each pool of the group."""
        for pool in self._sockherd_pools():
            log.info("SIGTTOU: %d workers wanted", pool.scale_by(-1))

    def handle_sigusr1(self) -> None:
        """Reopen the log files of logging's FileHandlers (after log rotation)."""
        for handler in list(logging._handlers.values()):  # type: ignore[attr-defined]
            if isinstance(handler, logging.FileHandler) and handler.stream is not None:
                handler.acquire()
                try:
                    handler.stream.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()

    # --- the control socket ------------------------------------------------------------

    def _sockherd_control_command(self, line: str) -> dict[str, Any]:
        """Carry out one control-socket command (see `control`) and describe the result.

        In a group, commands act on every pool and `status` sums over them; each
        worker is then tagged with its server's metrics label.
        """
        pools = self._sockherd_pools()
        if not pools:
            return {"ok": False, "error": "the supervisor is not running"}
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        if command == "status":
            return self._sockherd_status(pools)
        if command == "scale":
            try:
                number = int(argument)
            except ValueError:
                return {
                    "ok": False,
                    "error": f"scale needs a number (N, +N or -N), not {argument!r}",
                }
            relative = argument[:1] in "+-"
            desired = [
                pool.scale_by(number) if relative else pool.scale_to(number) for pool in pools
            ]
            return {"ok": True, "desired": sum(desired)}
        if command == "reload":
            for pool in pools:
                pool.reload()
            return {"ok": True, "generation": pools[0].generation}
        if command == "stop":
            self.shutdown()  # type: ignore[attr-defined]
            return {"ok": True}
        return {
            "ok": False,
            "error": f"unknown command {command!r}; commands: status, scale N, reload, stop",
        }

    def _sockherd_status(self, pools: list[WorkerPool]) -> dict[str, Any]:
        group = self._sockherd_group()  # type: ignore[attr-defined]
        workers = []
        for server in group:
            for worker in server.worker_stats():
                if len(group) > 1:
                    worker["server"] = server_label(server)
                workers.append(worker)
        return {
            "ok": True,
            "desired": sum(pool.desired for pool in pools),
            "generation": pools[0].generation,
            "workers": workers,
            "requests_total": sum(pool.scoreboard.total_requests() for pool in pools),
            "restarts": dict(sum((pool.restarts for pool in pools), collections.Counter())),
            "exits": dict(sum((pool.exit_counts for pool in pools), collections.Counter())),
            "orphans_reaped": sum(pool.orphans_reaped for pool in pools),
        }

    # --- introspection ---------------------------------------------------------------

    def worker_stats(self) -> list[dict[str, Any]]:
        """One dict per live worker: slot, pid, generation, state, requests, errors, age (s)."""
        pool = self._sockherd_pool
        if pool is None:
            return []
        stats = []
        now = time.monotonic()
        for index in sorted(pool.workers):
            slot = pool.scoreboard.slots[index]
            stats.append(
                {
                    "slot": index,
                    "pid": slot.pid,
                    "generation": slot.generation,
                    "state": pool.scoreboard.state(index).name.lower(),
                    "requests": slot.requests,
                    "errors": slot.errors,
                    "age": round(now - pool.workers[index].started_at, 3),
                }
            )
        return stats

    # --- sockherd internals ------------------------------------------------------------

    def _sockherd_limit_reads(self, connection: Any) -> Any:
        """Dispatch mode accepts in the supervisor: the worker that receives the
        connection applies read_timeout there (a socket object does not travel)."""
        if self._sockherd_handoff() == "dispatch":
            return connection
        return super()._sockherd_limit_reads(connection)  # type: ignore[misc]

    def _sockherd_accepting(self) -> bool:
        pool = self._sockherd_pool
        return (
            pool is not None and self._sockherd_handoff() == "dispatch" and pool.has_idle_worker()
        )

    def _sockherd_handoff(self) -> str:
        if self.socket.type == socket.SOCK_DGRAM:  # type: ignore[attr-defined]
            return "accept"  # datagram workers all read the shared socket
        return self.handoff

    def _sockherd_worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def _sockherd_max_workers(self) -> int:
        return self.max_workers or 4 * (os.cpu_count() or 1)

    def _sockherd_close_supervisor_fds(self) -> None:
        super()._sockherd_close_supervisor_fds()  # type: ignore[misc]
        if self._sockherd_control is not None:
            self._sockherd_control.close_in_worker()

    def _sockherd_take_orphan_duty(self, in_main_thread: bool) -> bool:
        """Decide whether this supervisor reaps orphans; become a subreaper if needed."""
        wanted = in_main_thread if self.reap_orphans is None else self.reap_orphans
        if not wanted:
            return False
        if os.getpid() == 1:
            return True
        if become_subreaper():
            return True
        log.info(
            "this platform has no child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER): "
            "processes that handlers fork and abandon are left to init"
        )
        return False

    def _sockherd_validate(self) -> None:
        if self.handoff not in HANDOFFS:
            raise ValueError(f"handoff must be one of {HANDOFFS}, not {self.handoff!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        check_read_timeout(getattr(self, "read_timeout", None))
        self._sockherd_validate_metrics_security()

    def _sockherd_validate_metrics_security(self) -> None:
        """Fail before any worker is forked if the metrics auth or TLS settings are unusable."""
        from ..metrics.endpoint_security import BasicAuth, tls_context

        if self.metrics_basic_auth is not None:  # type: ignore[attr-defined]
            BasicAuth(self.metrics_basic_auth)  # type: ignore[attr-defined]
        tls_context(self.metrics_tls_certfile, self.metrics_tls_keyfile)  # type: ignore[attr-defined]

    def _sockherd_configure(self, settings: dict[str, Any]) -> None:
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unknown setting(s) {unknown}; "
                f"known: {', '.join(SETTINGS)}"
            )
        for name, value in settings.items():
            setattr(self, name, value)
        self._sockherd_validate()


def become_subreaper() -> bool:
    """Linux: adopt orphaned descendants (PR_SET_CHILD_SUBREAPER); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _init_with_settings(socket_server: type) -> Any:
    """The constructor of a Prefork*Server: the socket server's, plus keyword settings."""

    def __init__(
        self: Any,
        server_address: Any,
        RequestHandlerClass: Any,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        """Like the socket server's constructor; `settings` are PreforkMixIn settings."""
        self._sockherd_configure(settings)
        socket_server.__init__(self, server_address, RequestHandlerClass, bind_and_activate)  # type: ignore[misc]

    return __init__


class PreforkTCPServer(PreforkMixIn, TCPServer):
    """A TCP server whose requests are served by a supervised pool of worker processes."""

    __init__ = _init_with_settings(TCPServer)


class PreforkUDPServer(PreforkMixIn, UDPServer):
    """A UDP server whose workers all read the shared datagram socket."""

    __init__ = _init_with_settings(UDPServer)


if hasattr(socket, "AF_UNIX"):
    from .socket_servers import UnixDatagramServer, UnixStreamServer

    class PreforkUnixStreamServer(PreforkMixIn, UnixStreamServer):
        """A Unix stream server served by a supervised pool of worker processes."""

        __init__ = _init_with_settings(UnixStreamServer)

    class PreforkUnixDatagramServer(PreforkMixIn, UnixDatagramServer):
        """A Unix datagram server whose workers all read the shared socket."""

        __init__ = _init_with_settings(UnixDatagramServer)
