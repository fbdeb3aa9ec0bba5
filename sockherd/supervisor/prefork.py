"""PreforkMixIn: the same handlers and hooks, served by a supervised pool of worker processes.

The server process is the supervisor: it binds and keeps the listening socket,
runs the usual serve loop (woken by worker exits, worker messages, signals and
`shutdown()`), and never runs request code.  Workers (see `workers.worker_loop`)
are forked by `WorkerPool` with multiprocess's fork context.

Configuration is class attributes, as everywhere in socketserver, or the same
names as keyword arguments of the Prefork*Server constructors:

==================== ======= ====================================================
workers              None    worker processes; None means one per CPU the process may
                             use: cgroup quota, affinity, count (`pool_sizing`)
handoff              accept  "accept" (workers block in accept) or "dispatch"
                             (the supervisor accepts and passes each connection
                             to the least recently used idle worker)
max_requests         0       recycle a worker after this many requests (0: never)
max_requests_jitter  0       plus a random 0..jitter, so workers do not recycle together
threads              1       requests each worker serves at once, in a pool of threads
                             (see `workers.threaded_worker`); 1: no threads
worker_connections   1000    threads > 1: connections a worker holds at once, those
                             kept alive waiting for their client's next request included
max_worker_memory    None    recycle a worker whose resident memory exceeds this many
                             bytes after a request
worker_timeout       30      seconds one request (or a worker's boot) may take before
                             SIGABRT (traceback in the log) and, kill_grace later, SIGKILL
kill_grace           2       seconds between SIGABRT and SIGKILL
slow_request_timeout None    seconds after which a request's Python traceback is
                             logged, once; it keeps running (see `slow_requests`)
slow_log             None    file for those tracebacks instead of the log
graceful_timeout     30      seconds a stopping server waits for requests in progress
min_workers          1       lower bound for TTOU and autoscaling; 0 (autoscale only)
                             lets an idle pool scale to zero
max_workers          None    upper bound for TTIN; None means 4 per usable CPU
heartbeat_interval   0.5     how often an idle worker wakes to beat and check for a stop
                             request (accept mode: the timeout of its wait for a
                             connection; datagram servers use SO_RCVTIMEO, and where
                             recvfrom() ignores it, idle workers see a stop only when a
                             datagram arrives or graceful_timeout expires)
autoscale            False   adjust the worker count between min_workers and
                             max_workers on saturation (see `autoscaler`)
min_spare_workers    1       autoscale: add workers when fewer are idle
max_spare_workers    4       autoscale: remove one when more stay idle a cool-down
autoscale_interval   1       autoscale: seconds between scale-up steps (1, 2, 4, ...)
autoscale_cooldown   10      autoscale: seconds of surplus before each scale-down step
idle_timeout         None    autoscale: seconds without a request before the pool drops
                             to min_workers (0: scale to zero; a connection wakes it)
max_spawn_rate       32      autoscale: workers started per second at most
max_pool_memory      None    autoscale: total PSS of the workers not to grow past (bytes);
                             None: 80% of the cgroup memory limit, if any; 0: none
refork_after         None    [N1, N2, ...]: a worker that served N1 requests becomes the
                             template the next generation forks from (then N2 ...;
                             `ctl refork` by hand; Linux: see `refork`)
freeze_heap          True    gc.freeze() the supervisor's heap before forking a worker,
                             so workers keep sharing its pages (see `heap_freeze`)
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

Lifecycle: `serve_forever()` puts the server under an Arbiter (`arbiter`), which
starts the workers and supervises them until `shutdown()` (or SIGTERM/SIGINT in
the main thread), drains them inside the loop, then returns; `server_close()`
closes the socket as usual.  Signals, when `serve_forever()` runs in the main
thread: TERM/INT graceful stop, QUIT immediate stop, HUP rolling reload (new
workers report ready before old ones drain), TTIN/TTOU one worker more/less,
USR1 reopen log files.  Supervision runs in the Arbiter's loop hooks, after
`service_actions()`: an override of it that never calls `super()` changes nothing.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..metrics.snapshot import PoolSnapshot
from ..server.read_deadline import check_read_timeout
from ..server.socket_servers import TCPServer, UDPServer
from .arbiter import Arbiter, supervising
from .pool_handover import adopt_pool, carried_scoreboard, let_go
from .pool_settings import PoolSettings, default_max_workers, default_workers
from .pool_sizing import host_sizing
from .reaper import ChildReaper
from .settings import ATTRIBUTES, PREFORK_ATTRIBUTES, validate_setting
from .worker_pool import WorkerPool

if TYPE_CHECKING:
    # The host class a mix-in is mixed into, for the type checker only: at run time the
    # mix-in's base is object, so the MRO is CPython's.
    from ..server.socket_servers import TCPServer as _MixInHost
else:
    _MixInHost = object

log = logging.getLogger(__name__)
DISPATCH_BURST = 64  # dispatch mode: connections handed out in one loop pass, at most

# The keyword settings of a Prefork*Server: every attribute of the settings table, plus
# the metrics credentials (which the command reads from a file).
SETTINGS = (
    *PREFORK_ATTRIBUTES,
    *(name for name in ATTRIBUTES if name not in PREFORK_ATTRIBUTES),
    "metrics_basic_auth",
)


class PreforkMixIn(_MixInHost):
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
    slow_request_timeout: float | None = None
    slow_log: str | None = None
    threads = 1
    worker_connections = 1000
    freeze_heap = True
    idle_timeout: float | None = None
    max_spawn_rate = 32
    max_pool_memory: int | None = None
    refork_after: tuple[int, ...] | list[int] | None = None

    # sockherd state, created lazily (no mix-in __init__).
    _pool: WorkerPool | None = None
    _wrapped_refused = 0

    # --- hooks ------------------------------------------------------------------------

    def worker_setup(self) -> None:
        """Called in each new worker before it serves.  May be overridden.

        An exception here counts as a boot failure: the worker exits and the
        supervisor starts the next one after an exponential back-off.
        """

    # --- supervision --------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start the workers and supervise them until shutdown(); drain them before returning.

        A server that `sockherd serve` runs is already under its Arbiter; a program's
        own prefork server gets one here, with `control_socket` if set.
        """
        if supervising(self) is not None:
            super().serve_forever(poll_interval)
            return
        self._validate()
        arbiter = Arbiter([self], control_socket=self.control_socket)
        try:
            arbiter.run(poll_interval)
        finally:
            arbiter.close()

    def start_pool(
        self,
        reaper: ChildReaper,
        on_child_reaped: Callable[[int], None],
        carried: dict[str, Any] | None = None,
    ) -> WorkerPool:
        """For the Arbiter: fork this server's workers; the pool is theirs to drive.

        `carried`: the pool an earlier image of this process handed over (an in-place
        upgrade): its workers are adopted and a new generation replaces them.
        """
        self._validate()
        if self.workers is None:
            log.info("%s", host_sizing().describe())
        settings = self.pool_settings()
        if carried is not None:
            try:
                scoreboard = carried_scoreboard(carried)
            except ValueError as error:
                log.error("%s: the old workers stop and new ones start (counters restart)", error)
                let_go(carried, reaper)
                carried = None
        if carried is None:
            self._pool = WorkerPool(self, settings, reaper, on_child_reaped)
        else:
            needed = len(carried["workers"]) + settings.workers
            if scoreboard.size < needed:
                log.error(
                    "the new settings need %d scoreboard slots and the running pool has %d: "
                    "not every new worker can start; restart the supervisor to grow it",
                    needed,
                    scoreboard.size,
                )
            self._pool = WorkerPool(self, settings, reaper, on_child_reaped, scoreboard)
            adopt_pool(self._pool, carried)
        self._pool.reconcile(0.0)
        return self._pool

    def pool_settings(self) -> PoolSettings:
        """The settings of this server's pool, resolved now."""
        workers = self.workers or default_workers()
        datagram = self.socket.type == socket.SOCK_DGRAM
        return PoolSettings(
            workers=workers,
            min_workers=self.min_workers if self.autoscale else max(1, self.min_workers),
            max_workers=max(self.max_workers or default_max_workers(), workers),
            handoff="accept" if datagram else self.handoff,
            worker_timeout=self.worker_timeout,
            kill_grace=self.kill_grace,
            graceful_timeout=self.graceful_timeout,
            heartbeat_interval=self.heartbeat_interval,
            autoscale=self.autoscale,
            min_spare_workers=self.min_spare_workers,
            max_spare_workers=self.max_spare_workers,
            autoscale_interval=self.autoscale_interval,
            autoscale_cooldown=self.autoscale_cooldown,
            slow_request_timeout=self.slow_request_timeout,
            slow_log=self.slow_log,
            threads=self.threads,
            memory_limit=host_sizing().memory_limit,
            idle_timeout=self.idle_timeout,
            max_spawn_rate=self.max_spawn_rate,
            max_pool_memory=self.max_pool_memory,
            refork_after=tuple(int(n) for n in self.refork_after or ()),
        )

    def pool_snapshot(self) -> PoolSnapshot | None:
        """The pool as the public snapshot describes it; None while no pool runs."""
        pool = self._pool
        if pool is None or pool.closed:
            return None
        return pool.snapshot()

    def worker_stats(self) -> list[dict[str, Any]]:
        """One dict per live worker: slot, pid, generation, state, requests, errors, age (s)."""
        snapshot = self.pool_snapshot()
        if snapshot is None:
            return []
        return [
            {
                "slot": w.slot,
                "pid": w.pid,
                "generation": w.generation,
                "state": w.state,
                "requests": w.requests,
                "errors": w.errors,
                "age": w.age,
            }
            for w in snapshot.workers
        ]

    def handle_request(self) -> None:
        """Not available: a prefork server serves through its pool, in serve_forever()."""
        raise RuntimeError(
            f"{type(self).__name__} serves through its worker pool: call serve_forever(), "
            "not handle_request()"
        )

    def _handle_request_noblock(self) -> None:
        """Handle one request, without blocking; dispatch mode: then those already waiting
        while a worker is idle (at most DISPATCH_BURST: a burst costs one loop pass)."""
        super()._handle_request_noblock()
        pool = self._pool
        if pool is None or pool.dispatcher is None:
            return
        for _ in range(DISPATCH_BURST):
            if self.accept_paused_for() or not (self.accepting() and self.backlog_waiting()):
                return
            super()._handle_request_noblock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Dispatch mode, in the supervisor: pass the connection to an idle worker.

        Only a plain socket can be passed (its fd travels, not the Python object): a
        connection that get_request() wrapped (TLS) is refused with an error, since
        the worker would see the raw bytes; wrap in accept mode instead.
        """
        pool = self._pool
        if type(request) is not socket.socket:
            if not self._wrapped_refused:
                log.error(
                    "dispatch hand-off can pass only plain sockets, but get_request() returned "
                    "a %s; refusing such connections. Use handoff='accept' so that workers call "
                    "get_request() (and wrap the connection) themselves",
                    type(request).__name__,
                )
            self._wrapped_refused += 1
            self.shutdown_request(request)
            return
        dispatched = False
        if pool is not None and pool.dispatcher is not None:
            dispatched = pool.dispatcher.dispatch(request, client_address, pool.workers)
        if not dispatched:
            log.warning("no worker could take the connection from %s; closing it", client_address)
        self.close_request(request)

    # --- internals ----------------------------------------------------------------------

    def _limit_reads(self, connection: Any) -> Any:
        """Dispatch mode accepts in the supervisor: the worker that receives the
        connection applies read_timeout there (a socket object does not travel).  Only
        TCPServer.get_request() calls this: the listener is a stream socket."""
        if self.handoff == "dispatch":
            return connection
        return super()._limit_reads(connection)

    def _validate(self) -> None:
        """Check every setting by the settings table's rules (the command's own)."""
        for name in PREFORK_ATTRIBUTES:
            validate_setting(name, getattr(self, name))
        if self.min_workers == 0 and not self.autoscale:
            raise ValueError("min_workers 0 (scale to zero) needs autoscale")
        check_read_timeout(getattr(self, "read_timeout", None))
        self._validate_metrics_security()

    def _validate_metrics_security(self) -> None:
        """Fail before any worker is forked if the metrics auth or TLS settings are unusable."""
        from ..metrics.endpoint_security import BasicAuth, tls_context

        auth = getattr(self, "metrics_basic_auth", None)
        if auth is not None:
            BasicAuth(auth)
        tls_context(
            getattr(self, "metrics_tls_certfile", None), getattr(self, "metrics_tls_keyfile", None)
        )

    def _configure(self, settings: dict[str, Any]) -> None:
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unknown setting(s) {unknown}; "
                f"known: {', '.join(SETTINGS)}"
            )
        for name, value in settings.items():
            setattr(self, name, value)
        self._validate()


def _init_with_settings(socket_server: type[TCPServer]) -> Any:
    """The constructor of a Prefork*Server: the socket server's, plus keyword settings."""

    def __init__(
        self: Any,
        server_address: Any,
        RequestHandlerClass: Any,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        """Like the socket server's constructor; `settings` are PreforkMixIn settings."""
        self._configure(settings)
        socket_server.__init__(self, server_address, RequestHandlerClass, bind_and_activate)

    return __init__


class PreforkTCPServer(PreforkMixIn, TCPServer):
    """A TCP server whose requests are served by a supervised pool of worker processes."""

    __init__ = _init_with_settings(TCPServer)


class PreforkUDPServer(PreforkMixIn, UDPServer):
    """A UDP server whose workers all read the shared datagram socket."""

    __init__ = _init_with_settings(UDPServer)


if hasattr(socket, "AF_UNIX"):
    from ..server.socket_servers import UnixDatagramServer, UnixStreamServer

    class PreforkUnixStreamServer(PreforkMixIn, UnixStreamServer):
        """A Unix stream server served by a supervised pool of worker processes."""

        __init__ = _init_with_settings(UnixStreamServer)

    class PreforkUnixDatagramServer(PreforkMixIn, UnixDatagramServer):
        """A Unix datagram server whose workers all read the shared socket."""

        __init__ = _init_with_settings(UnixDatagramServer)
