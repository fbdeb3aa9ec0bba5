"""BaseServer: the request template method and the serve loop.

Theory of operation
-------------------
The request path is CPython's template method, hook for hook:
`handle_request()` / `serve_forever()` -> `_handle_request_noblock()` ->
`get_request()` -> `verify_request()` -> `process_request()` ->
`finish_request()` -> `shutdown_request()`, with `handle_error()` for
exceptions and `service_actions()` once per `serve_forever()` iteration.

What differs is how the loop sleeps.  CPython sleeps in `select()` on the
listening socket alone and notices everything else (a `shutdown()`, a finished
child) only when `poll_interval` expires.  Here the wait (`LoopWait`) also
watches *wake sources*:

* a self-pipe (`WakeupPipe`) that `shutdown()` writes to, so it returns at once;
* fds that mix-ins register with `_sockherd_add_wake_source()`; ForkingMixIn
  adds one per child that turns readable when the child exits, with a callback
  that reaps it, so no zombie outlives one loop iteration.

`poll_interval` still bounds each wait, so `service_actions()` keeps running
at least that often, as documented.  While an accept back-off is in force (see
`accept_backoff`), the listening socket is left out of the wait so a
persistent EMFILE cannot spin the loop.
"""

from __future__ import annotations

import logging
import selectors
import sys
import threading
from collections.abc import Callable
from time import monotonic as time
from typing import TYPE_CHECKING, Any

from ..metrics.request_stats import RequestStats
from .accept_backoff import AcceptBackoff
from .loop_wait import LoopWait
from .read_deadline import read_timed_out
from .wakeup import WakeupPipe

if TYPE_CHECKING:
    from ..metrics.endpoint import MetricsEndpoint
    from ..metrics.user_multiprocess import UserMetrics

# poll/select rather than epoll/kqueue: no extra fd and a single syscall per wait,
# as CPython chose.  poll has no FD_SETSIZE limit.
if hasattr(selectors, "PollSelector"):
    _ServerSelector: type[selectors.BaseSelector] = selectors.PollSelector
else:
    _ServerSelector = selectors.SelectSelector

log = logging.getLogger(__name__)


class BaseServer:
    """Base class for server classes.

    Methods for the caller:

    - __init__(server_address, RequestHandlerClass)
    - serve_forever(poll_interval=0.5)
    - shutdown()
    - handle_request()  # if you do not use serve_forever()
    - fileno() -> int   # for selector

    Methods that may be overridden:

    - server_bind()
    - server_activate()
    - get_request() -> request, client_address
    - handle_timeout()
    - verify_request(request, client_address)
    - server_close()
    - process_request(request, client_address)
    - shutdown_request(request)
    - close_request(request)
    - service_actions()
    - handle_error()

    Methods for derived classes:

    - finish_request(request, client_address)

    Class variables that may be overridden by derived classes or
    instances:

    - timeout
    - address_family
    - socket_type
    - allow_reuse_address
    - allow_reuse_port

    Instance variables:

    - RequestHandlerClass
    - socket
    """

    timeout: float | None = None
    # sockherd: serve Prometheus metrics on this (host, port) while serve_forever() runs.
    metrics_address: tuple[str, int] | None = None
    # sockherd: the `server` label of those metrics (default: the listening address).
    metrics_name: str | None = None
    # sockherd: (user, password) every scrape must present (HTTP basic auth); None: open.
    metrics_basic_auth: tuple[str, str] | None = None
    # sockherd: serve the metrics over HTTPS with this PEM certificate (chain) and PEM key
    # (None: the key is in the certificate file).  See metrics.endpoint_security.
    metrics_tls_certfile: str | None = None
    metrics_tls_keyfile: str | None = None

    # sockherd state, created lazily so subclasses that skip __init__ chains still work.
    _sockherd_wakeup: WakeupPipe | None = None
    _sockherd_accept_backoff: AcceptBackoff | None = None
    _sockherd_serving_thread: int | None = None
    _sockherd_wake_sources: dict[int, tuple[Callable[[], None], int]] | None = None
    _sockherd_loop_wait: LoopWait | None = None
    _sockherd_request_stats: RequestStats | None = None
    _sockherd_metrics: MetricsEndpoint | None = None
    _sockherd_user_metrics: UserMetrics | None = None
    # A group of servers served by one loop (sockherd.supervisor.server_group): the
    # first server's loop serves the others, which point at it as their loop host.
    _sockherd_loop_host: Any = None
    _sockherd_siblings: tuple[Any, ...] = ()

    def __init__(self, server_address: Any, RequestHandlerClass: Any) -> None:
        """Constructor.  May be extended, do not override."""
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self.__is_shut_down = threading.Event()
        self.__shutdown_request = False

    def server_activate(self) -> None:
        """Called by constructor to activate the server.

        May be overridden.
        """
        pass

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle one request at a time until shutdown.

        Polls for shutdown every poll_interval seconds. Ignores
        self.timeout. If you need to do periodic tasks, do them in
        another thread.

        sockherd: `shutdown()` and finished children wake the loop at once
        through file descriptors; `poll_interval` only bounds how long the loop
        may sleep before `service_actions()` runs again.
        """
        self.__is_shut_down.clear()
        self._sockherd_serving_thread = threading.get_ident()
        try:
            wakeup = self._sockherd_wakeup_pipe()
            if wakeup is not None:
                wakeup.drain()
            metrics = self._sockherd_open_metrics()
            with _ServerSelector() as selector:
                waiter = self._sockherd_loop_wait = LoopWait(self, selector, wakeup)
                while not self.__shutdown_request:
                    ready = waiter.wait(poll_interval)
                    # bpo-35017: shutdown() called during select(), exit immediately.
                    if self.__shutdown_request:
                        break
                    if ready:
                        self._handle_request_noblock()

                    self.service_actions()
                    for sibling in self._sockherd_siblings:
                        sibling.service_actions()
                    if metrics is not None:
                        metrics.expire_slow_clients()
        finally:
            self._sockherd_loop_wait = None
            try:
                for sibling in self._sockherd_siblings:
                    sibling._sockherd_before_loop_exit()
                self._sockherd_before_loop_exit()
                self._sockherd_close_metrics()
            finally:
                self._sockherd_serving_thread = None
                self.__shutdown_request = False
                self.__is_shut_down.set()

    def shutdown(self) -> None:
        """Stops the serve_forever loop.

        Blocks until the loop has finished. This must be called while
        serve_forever() is running in another thread, or it will
        deadlock.

        sockherd: the loop is woken at once instead of at the next
        `poll_interval`.  Called from the thread running serve_forever()
        (a handler, a signal handler), it only asks the loop to stop after
        the current step and returns, where CPython would deadlock.  A server
        served by another server's loop (a group) stops that loop.
        """
        host = self._sockherd_loop_host
        if host is not None:
            host.shutdown()
            return
        self.__shutdown_request = True
        wakeup = self._sockherd_wakeup
        if wakeup is not None:
            wakeup.wake()  # also ends a select() that PEP 475 resumes after a signal handler
        if self._sockherd_serving_thread == threading.get_ident():
            return
        self.__is_shut_down.wait()

    def service_actions(self) -> None:
        """Called by the serve_forever() loop.

        May be overridden by a subclass / Mixin to implement any code that
        needs to be run during the loop.
        """
        pass

    # The distinction between handling, getting, processing and finishing a
    # request is fairly arbitrary.  Remember:
    #
    # - handle_request() is the top-level call.  It calls selector.select(),
    #   get_request(), verify_request() and process_request()
    # - get_request() is different for stream or datagram sockets
    # - process_request() is the place that may fork a new process or create a
    #   new thread to finish the request
    # - finish_request() instantiates the request handler class; this
    #   constructor will handle the request all by itself

    def handle_request(self) -> None:
        """Handle one request, possibly blocking.

        Respects self.timeout.

        sockherd: while it waits, finished children of a ForkingMixIn server
        are reaped as they exit, which CPython never does here.
        """
        # Support people who used socket.settimeout() to escape
        # handle_request before self.timeout was available.
        timeout = self.socket.gettimeout()  # type: ignore[attr-defined]
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        if timeout is not None:
            deadline = time() + timeout

        # Wait until a request arrives or the timeout expires - the loop is
        # necessary to accommodate early wakeups due to EINTR or wake sources.
        with _ServerSelector() as selector:
            waiter = self._sockherd_loop_wait = LoopWait(self, selector, None)
            try:
                while True:
                    if waiter.wait(timeout):
                        return self._handle_request_noblock()
                    if timeout is not None:
                        timeout = deadline - time()
                        if timeout < 0:
                            return self.handle_timeout()
            finally:
                self._sockherd_loop_wait = None

    def _handle_request_noblock(self) -> None:
        """Handle one request, without blocking.

        I assume that selector.select() has returned that the socket is
        readable before this function was called, so there should be no risk of
        blocking in get_request().
        """
        try:
            request, client_address = self.get_request()  # type: ignore[attr-defined]
        except OSError as error:
            self._sockherd_backoff().failed(error, self.server_address)
            return
        backoff = self._sockherd_accept_backoff
        if backoff is not None:
            backoff.succeeded(self.server_address)
        if self.verify_request(request, client_address):
            try:
                self.process_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
                self.shutdown_request(request)
            except:
                self.shutdown_request(request)
                raise
        else:
            self.shutdown_request(request)

    def handle_timeout(self) -> None:
        """Called if no new request arrives within self.timeout.

        Overridden by ForkingMixIn.
        """
        pass

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Verify the request.  May be overridden.

        Return True if we should proceed with this request.
        """
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Call finish_request.

        Overridden by ForkingMixIn and ThreadingMixIn.

        sockherd: the request is counted in `request_stats` before it is shut down.
        """
        stats = self.request_stats
        stats.started()
        began = time()
        try:
            self.finish_request(request, client_address)
        except BaseException:
            stats.finished(self._sockherd_failure_outcome(request), time() - began)
            raise
        stats.finished("ok", time() - began)
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Called to clean-up the server.

        May be overridden.

        sockherd: also closes the loop's wake-up pipe.
        """
        wakeup = self._sockherd_wakeup
        if wakeup is not None:
            self._sockherd_wakeup = None
            wakeup.close()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Finish one request by instantiating RequestHandlerClass."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """Called to shutdown and close an individual request."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""
        pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Handle an error gracefully.  May be overridden.

        The default is to print a traceback and continue.

        sockherd: a connection cut off by `read_timeout` (a stream server's setting)
        is logged in one WARNING line instead ("connection from ADDRESS timed out
        (read_timeout=N s); closed"); with read_timeout None the output is CPython's.
        """
        if read_timed_out(request):
            log.warning(
                "connection from %s timed out (read_timeout=%g s); closed",
                client_address,
                request.read_timeout,
            )
            return
        print("-" * 40, file=sys.stderr)
        print(
            "Exception occurred during processing of request from", client_address, file=sys.stderr
        )
        import traceback

        traceback.print_exc()
        print("-" * 40, file=sys.stderr)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()

    @property
    def request_stats(self) -> RequestStats:
        """Requests this server process has seen finish: counts by outcome, durations.

        Sync and threading servers count each request; ForkingMixIn counts each
        reaped child; prefork workers keep theirs in the scoreboard instead.
        """
        stats = self._sockherd_request_stats
        if stats is None:
            stats = self._sockherd_request_stats = RequestStats()
        return stats

    # --- sockherd's loop machinery (private) -------------------------------------------

    def _sockherd_failure_outcome(self, request: Any) -> str:
        """The request-metrics outcome of a request whose handler raised: "timeout" if
        its connection was cut off by read_timeout, else "error"."""
        return "timeout" if read_timed_out(request) else "error"

    def _sockherd_loop_finished(self) -> bool:
        """True once a serve_forever() loop has run to its end (and none runs now)."""
        return self.__is_shut_down.is_set()

    def _sockherd_group(self) -> list[Any]:
        """Every server served by the same loop as this one, the loop's own first."""
        host = self._sockherd_loop_host or self
        return [host, *host._sockherd_siblings]

    def _sockherd_accepting(self) -> bool:
        """Whether the loop should watch the listening socket now (PreforkMixIn may say no)."""
        return True

    def _sockherd_before_loop_exit(self) -> None:
        """Runs as serve_forever() ends, before shutdown() returns (PreforkMixIn stops workers)."""

    def _sockherd_close_supervisor_fds(self) -> None:
        """In a forked child: close the serve loop's own fds (wake-up pipe, metrics endpoint)."""
        wakeup = self._sockherd_wakeup
        if wakeup is not None:
            self._sockherd_wakeup = None
            wakeup.close()
        metrics = self._sockherd_metrics
        if metrics is not None:
            self._sockherd_metrics = None
            metrics.close_in_child()

    def _sockherd_open_metrics(self) -> MetricsEndpoint | None:
        if self.metrics_address is None:
            return None
        from ..metrics.endpoint import MetricsEndpoint, build_collectors
        from ..metrics.endpoint_security import BasicAuth, tls_context
        from ..metrics.user_multiprocess import UserMetrics, multiprocess_directory

        # Settings first: a bad certificate fails the start before anything is touched.
        tls = tls_context(self.metrics_tls_certfile, self.metrics_tls_keyfile)
        auth = BasicAuth(self.metrics_basic_auth) if self.metrics_basic_auth is not None else None
        collectors = build_collectors(self)
        directory = multiprocess_directory()
        if directory:
            self._sockherd_user_metrics = UserMetrics(directory)
            collectors.append(self._sockherd_user_metrics)
        self._sockherd_metrics = MetricsEndpoint(
            self.metrics_address,
            collectors,
            self._sockherd_add_wake_source,
            self._sockherd_remove_wake_source,
            tls=tls,
            basic_auth=auth,
        )
        return self._sockherd_metrics

    def _sockherd_close_metrics(self) -> None:
        metrics = self._sockherd_metrics
        if metrics is not None:
            self._sockherd_metrics = None
            metrics.close()
        user_metrics = self._sockherd_user_metrics
        if user_metrics is not None:
            self._sockherd_user_metrics = None
            user_metrics.close()

    def _sockherd_child_reaped(self, pid: int) -> None:
        """Every reaped child passes here (request children, workers, orphans)."""
        if self._sockherd_user_metrics is not None:
            self._sockherd_user_metrics.child_exited(pid)

    def _sockherd_add_wake_source(
        self, fd: int, callback: Callable[[], None], writable: bool = False
    ) -> None:
        """Wake the serve loop and run `callback` (in the loop) whenever `fd` is readable
        (or writable, with `writable`).  Adding an fd again changes its callback/interest.

        For mix-ins; ForkingMixIn adds each child's exit fd.  Takes effect at once
        in a running loop and in every later one, until removed.  In a group, the
        fd is watched by the loop that serves the group.
        """
        host = self._sockherd_loop_host
        if host is not None:
            host._sockherd_add_wake_source(fd, callback, writable)
            return
        sources = self._sockherd_wake_sources
        if sources is None:
            sources = self._sockherd_wake_sources = {}
        events = selectors.EVENT_WRITE if writable else selectors.EVENT_READ
        sources[fd] = (callback, events)
        if self._sockherd_loop_wait is not None:
            self._sockherd_loop_wait.add(fd, callback, events)

    def _sockherd_remove_wake_source(self, fd: int) -> None:
        """Stop watching `fd`.  Call it before closing the fd."""
        host = self._sockherd_loop_host
        if host is not None:
            host._sockherd_remove_wake_source(fd)
            return
        if self._sockherd_wake_sources is not None:
            self._sockherd_wake_sources.pop(fd, None)
        if self._sockherd_loop_wait is not None:
            self._sockherd_loop_wait.remove(fd)

    def _sockherd_wakeup_pipe(self) -> WakeupPipe | None:
        wakeup = self._sockherd_wakeup
        if wakeup is None or wakeup.closed:
            try:
                wakeup = self._sockherd_wakeup = WakeupPipe()
            except OSError as error:
                log.warning(
                    "serve_forever() on %s runs without its wake-up pipe (%s): shutdown() "
                    "may take up to poll_interval",
                    self.server_address,
                    error,
                )
                return None
        return wakeup

    def _sockherd_backoff(self) -> AcceptBackoff:
        backoff = self._sockherd_accept_backoff
        if backoff is None:
            backoff = self._sockherd_accept_backoff = AcceptBackoff()
        return backoff
