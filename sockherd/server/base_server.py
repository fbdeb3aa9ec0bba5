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
* fds registered with `add_wake_source()`; ForkingMixIn adds one per child that
  turns readable when the child exits, with a callback that reaps it, so no
  zombie outlives one loop iteration.

The layers above take part in the loop only through `extension_points` and `loop_hooks`.

`poll_interval` still bounds each wait, so `service_actions()` keeps running
at least that often, as documented.  While an accept back-off is in force (see
`accept_backoff`), the listening socket is left out of the wait so a
persistent EMFILE cannot spin the loop.
"""

from __future__ import annotations

import logging
import selectors
import socket as _socket
import sys
import threading
from collections.abc import Callable
from time import monotonic as time
from typing import TYPE_CHECKING, Any

from . import extension_points
from .loop_hooks import LoopHooks, loop_extensions
from .loop_state import LoopState
from .loop_wait import LoopWait
from .read_deadline import outcome_of_failure, report_read_timeout
from .request_stats import RequestStats

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

    if TYPE_CHECKING:  # what the socket servers add, as CPython's BaseServer assumes
        socket: _socket.socket
        get_request: Callable[[], tuple[Any, Any]]

    @property
    def _loop(self) -> LoopState:
        """sockherd's loop state, made on first use (subclasses may skip __init__)."""
        state: LoopState | None = self.__dict__.get("_sockherd_loop")
        if state is None:
            state = self.__dict__["_sockherd_loop"] = LoopState()
        return state

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
        loop = self._loop
        loop.serving_thread = threading.get_ident()
        hooks = loop.running_hooks = loop.attached_hooks or tuple(loop_extensions(self))
        try:
            wakeup = loop.wakeup_pipe(self.server_address)
            if wakeup is not None:
                wakeup.drain()
            for hook in hooks:
                hook.loop_started(self)
            with _ServerSelector() as selector:
                waiter = loop.waiter = LoopWait(
                    self, loop.wake_sources, loop.guests, selector, wakeup, hooks
                )
                while not self._stop_now(hooks):
                    ready = waiter.wait(poll_interval)
                    # bpo-35017: shutdown() called during select(), exit immediately.
                    if self._stop_now(hooks):
                        break
                    if ready:
                        self._handle_request_noblock()

                    self.service_actions()
                    for guest in loop.guests:
                        guest.service_actions()
                    for hook in hooks:
                        hook.after_iteration(self)
        finally:
            loop.waiter = None
            try:
                for hook in hooks:
                    hook.loop_ending(self)
            finally:
                loop.running_hooks = ()
                loop.serving_thread = None
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
        loop = self._loop
        if loop.host is not None:
            loop.host.shutdown()
            return
        self.__shutdown_request = True
        if loop.wakeup is not None:
            loop.wakeup.wake()  # also ends a select() PEP 475 resumes after a signal handler
        if loop.serving_thread == threading.get_ident():
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

        sockherd: while it waits, a ForkingMixIn's finished children are reaped.
        """
        # Support people who used socket.settimeout() to escape
        # handle_request before self.timeout was available.
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        if timeout is not None:
            deadline = time() + timeout

        # Wait until a request arrives or the timeout expires - the loop is
        # necessary to accommodate early wakeups due to EINTR or wake sources.
        with _ServerSelector() as selector:
            loop = self._loop
            waiter = loop.waiter = LoopWait(self, loop.wake_sources, (), selector, None)
            try:
                while True:
                    if waiter.wait(timeout):
                        return self._handle_request_noblock()
                    if timeout is not None:
                        timeout = deadline - time()
                        if timeout < 0:
                            return self.handle_timeout()
            finally:
                self._loop.waiter = None

    def _handle_request_noblock(self) -> None:
        """Handle one request, without blocking.

        I assume that selector.select() has returned that the socket is
        readable before this function was called, so there should be no risk of
        blocking in get_request().
        """
        try:
            request, client_address = self.get_request()
        except OSError as error:
            self._loop.backoff().failed(error, self.server_address)
            return
        backoff = self._loop.accept_backoff
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
            stats.finished(outcome_of_failure(request), time() - began)
            raise
        stats.finished("ok", time() - began)
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Called to clean-up the server.

        May be overridden.

        sockherd: also closes the loop's wake-up pipe.
        """
        self._loop.close_wakeup()

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
        if report_read_timeout(request, client_address):
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
        """Requests this server process has seen finish, by outcome and duration (sync and
        threading: each request; ForkingMixIn: each reaped child; prefork: the scoreboard)."""
        return self._loop.stats()

    @property
    def accept_errors(self) -> dict[str, int]:
        """Failed accept()/recvfrom() calls of this server's socket, by errno name."""
        backoff = self._loop.accept_backoff
        return dict(backoff.failures) if backoff is not None else {}

    # --- sockherd's extension points, for the layers above (see extension_points) -------

    add_wake_source = extension_points.add_wake_source
    remove_wake_source = extension_points.remove_wake_source
    attach_loop_hooks = extension_points.attach_loop_hooks
    detach_loop_hooks = extension_points.detach_loop_hooks
    loop_hooks = property(extension_points.loop_hooks)
    join_loop = extension_points.join_loop
    loop_members = property(extension_points.loop_members)
    serving = property(extension_points.serving)
    accept_paused_for = extension_points.accept_paused_for
    accept_failed = extension_points.accept_failed
    accepting = extension_points.accepting
    backlog_waiting = extension_points.backlog_waiting
    close_loop_fds = extension_points.close_loop_fds

    # --- private to this layer ---------------------------------------------------------

    def _stop_now(self, hooks: tuple[LoopHooks, ...]) -> bool:
        """A stop was asked for and no loop hook holds the loop open (see `loop_hooks`)."""
        return self.__shutdown_request and all(hook.stop_requested(self) for hook in hooks)

    def _child_reaped(self, pid: int) -> None:
        """Every reaped request child passes here, for the loop hooks to know."""
        for hook in self.loop_members[0]._loop.running_hooks:
            hook.child_reaped(self, pid)
