"""The body of a prefork worker: take connections, run the server's handler, report back.

A worker is forked by the supervisor (`supervisor.worker_pool`) and never
returns into the supervisor's code.  It owns one scoreboard slot and one end
of a Unix socket pair (its *channel*) to the supervisor, on which it sends
one byte per event: `r` once it is ready, `i` each time it is idle again
(dispatch mode uses `i` to hand it the next connection).

Hand-off modes:

* **accept**: the worker calls `server.get_request()` on the inherited
  listening socket, which the supervisor made non-blocking (stream servers).
  A worker free for a request accepts until the backlog is empty (EAGAIN), as
  gunicorn's sync worker does: a running worker serves what is queued within its
  time slice instead of the kernel waking another process for each connection.
  Only then does it wait, in epoll with EPOLLEXCLUSIVE on the listener (the kernel
  wakes one waiting worker per connection, no thundering herd) and on its self-pipe,
  for at most `heartbeat_interval` seconds: the worker then beats its heartbeat and
  checks whether it was told to stop.  A worker that serves requests back to back
  without waiting or being preempted yields the CPU between two of them once per
  `cpu_turns.TURN`, so it is not preempted in the middle of one while connections
  queue behind it.  A busy worker never accepts, so a connection never waits behind
  a slow request while another worker is free.  Accepted sockets are ordinary
  blocking sockets (nothing to clear on each one); `get_request()` then applies the
  server's `read_timeout`.  Datagram servers block in `recvfrom()` instead, with
  SO_RCVTIMEO on the socket for the heartbeat.
* **dispatch**: the supervisor accepts and passes each connection over the
  channel (SCM_RIGHTS); the worker waits on the channel and a self-pipe, and
  applies `read_timeout` to each connection it receives.

The supervisor asks a worker to stop after the request in hand by setting its
slot's `stop` flag and sending SIGTERM (which interrupts a blocking call).  When the whole
server stops (the scoreboard's `draining` flag), an accept-mode worker first
serves what is already queued in the listen backlog.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import random
import select
import signal
import socket
import struct
import sys
from time import monotonic
from typing import Any, Self

from ..server.read_deadline import limit_reads, outcome_of_failure
from . import cpu_turns, live_record, slow_traceback
from .cpu_turns import CpuTurns
from .fd_passing import receive_connection
from .lifecycle import WorkerState
from .scoreboard import Scoreboard, record_request, request_done, take_request
from .template import PROMOTE, run_template

READY = b"r"
IDLE = b"i"
BOOT_FAILURE_EXIT = 3  # exit status of a worker whose worker_setup() raised

_NO_TIMEOUT = struct.pack("ll", 0, 0)  # struct timeval {0, 0}: SO_RCVTIMEO off


class Worker:
    """One worker process's loop; built and run in the child right after the fork."""

    def __init__(
        self,
        server: Any,
        index: int,
        scoreboard: Scoreboard,
        channel: socket.socket,
        handoff: str,
        heartbeat_interval: float,
    ) -> None:
        self.server = server
        self.index = index
        self.scoreboard = scoreboard
        self.slot: Any = None  # the shared slot's view, kept for the hot path (set by run())
        self.channel = channel
        self.handoff = handoff
        self.heartbeat_interval = heartbeat_interval
        self.stopping = False
        self.parent_pid = os.getppid()
        self.next_beat = 0.0  # monotonic time of the next heartbeat and supervisor check
        limit = server.max_requests
        if limit:
            limit += random.randint(0, server.max_requests_jitter or 0)
        self.request_limit = limit
        self.served = 0
        self.memory_limit = server.max_worker_memory or 0
        self.over_memory_limit = False
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_write, False)
        self.listener_wait: ListenerWait | None = None  # accept mode, stream listener

    # --- set-up --------------------------------------------------------------------

    def twin(self, index: int, channel: socket.socket) -> Self:
        """A new worker of this one's class and settings, for slot `index` and `channel`
        (what a template forks, `workers.template`)."""
        return type(self)(
            self.server,
            index,
            self.scoreboard,
            channel,
            self.handoff,
            self.heartbeat_interval,
            **self.own_settings(),
        )

    def own_settings(self) -> dict[str, Any]:
        """The keyword arguments a subclass's constructor takes beyond this class's."""
        return {}

    def install_signals(self) -> None:
        """SIGTERM: stop after the current request.  The supervisor's signals: ignored."""
        for name in ("SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGINT"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)
        for name in ("SIGQUIT", "SIGCHLD", "SIGPIPE"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        faulthandler.enable()  # SIGABRT from the supervisor's timeout dumps our traceback

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stopping = True
        try:
            os.write(self.wake_write, b"x")
        except OSError:
            pass

    def tell(self, event: bytes) -> None:
        """Send one event byte to the supervisor (ignored if it is gone)."""
        try:
            self.channel.send(event)
        except OSError:
            self.stopping = True

    # --- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until told to stop or recycled; return the process exit status."""
        self.install_signals()
        try:
            self.server.worker_setup()
        except Exception:
            import traceback

            print(f"sockherd worker {self.index}: worker_setup() failed:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            return BOOT_FAILURE_EXIT
        slow_traceback.arm(self.server)
        self.slot = self.scoreboard.slots[self.index]
        live_record.attach(self.slot)
        live_record.describe_http_requests(self.server)
        self.scoreboard.set_state(self.index, WorkerState.IDLE)
        self.tell(READY)
        listener = self.server.socket
        if (
            self.handoff != "dispatch"
            and getattr(listener, "type", None) == socket.SOCK_STREAM
            and listener.gettimeout() == 0.0  # made non-blocking by set_listener_heartbeat
        ):
            self.listener_wait = ListenerWait(listener.fileno(), self.wake_read)
        if self.handoff == "dispatch":
            self.dispatched_loop()
        else:
            self.accept_loop()
        if self.scoreboard.slots[self.index].stop == PROMOTE and not self.stopping:
            return run_template(self)  # reforking: fork the next generation from here
        self.scoreboard.set_state(self.index, WorkerState.STOPPING)
        return 0

    def should_stop(self) -> bool:
        """Stop when told to, when recycled, or when the supervisor has died.

        The heartbeat and the look at the parent pid happen at most once per
        `heartbeat_interval` (a busy worker's heartbeat is set as each request
        starts), which keeps the getppid() syscall and a shared-memory write off the
        per-request path.
        """
        if self.request_limit and self.served >= self.request_limit:
            return True
        if self.over_memory_limit:
            return True
        now = monotonic()
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_interval
            self.scoreboard.beat(self.index)
            if os.getppid() != self.parent_pid:
                return True
        # The scoreboard flag, not only SIGTERM's handler: a Python signal handler may
        # never run in a child forked from a non-main thread (seen on CPython 3.13.0).
        return self.stopping or bool(self.slot.stop)

    def accept_loop(self) -> None:
        """accept mode: block in get_request() on the shared listener, one request at a time;
        a worker that runs through requests without waiting takes turns (`cpu_turns`)."""
        turns = CpuTurns() if cpu_turns.supported() else None
        while not self.should_stop():
            if self.accept_one() and turns is not None:
                turns.request_done()
        if self.scoreboard.header.draining:
            self.drain_backlog()

    def accept_one(self, wait: bool = True) -> bool:
        """Accept and serve one request; False if none was waiting or accept() failed.

        With nothing to accept on a stream listener, first wait (unless `wait` is False)
        until a connection may be there, a signal came, or `heartbeat_interval` passed."""
        try:
            request, client_address = self.server.get_request()
        except BlockingIOError:
            # The backlog is empty (or, datagram, SO_RCVTIMEO expired): wait for the next
            # connection, then the caller beats and looks at the stop flag.
            if wait and self.listener_wait is not None:
                self.listener_wait.wait(self.heartbeat_interval)
            return False
        except InterruptedError:
            return False
        except OSError as error:
            pause = self.server.accept_failed(error)
            if pause:
                select.select([self.wake_read], [], [], pause)
            return False
        if not self.server.verify_request(request, client_address):
            self.server.shutdown_request(request)
            return True
        self.serve(request, client_address)
        return True

    def drain_backlog(self) -> None:
        """Serve the connections already queued when the whole server stops."""
        while self.server.backlog_waiting():
            if not self.accept_one(wait=False):
                return

    def dispatched_loop(self) -> None:
        """dispatch mode: serve each connection the supervisor sends over the channel."""
        poller = select.poll()
        poller.register(self.channel.fileno(), select.POLLIN)
        poller.register(self.wake_read, select.POLLIN)
        family, kind = self.server.socket.family, self.server.socket.type
        channel = self.channel.fileno()
        timeout = self.heartbeat_interval * 1000
        while not self.should_stop():
            for fd, _ in poller.poll(timeout):
                if fd == channel and not self.serve_dispatched(family, kind):
                    return
        # Told to stop: a connection already sent to us must still be served.
        channel_only = select.poll()
        channel_only.register(self.channel.fileno(), select.POLLIN)
        while channel_only.poll(0):
            if not self.serve_dispatched(family, kind):
                return

    def serve_dispatched(self, family: int, kind: int) -> bool:
        """Receive one connection from the channel and serve it; False if the channel is done."""
        try:
            received = self.receive_dispatched(family, kind)
        except OSError as error:
            return error.errno in (errno.EAGAIN, errno.EINTR)
        if received is None:
            return False  # the supervisor closed our channel
        self.serve(*received)
        self.dispatched_served()
        return True

    def receive_dispatched(self, family: int, kind: int) -> tuple[Any, Any] | None:
        """The next connection the supervisor passed, under its read deadline, and its
        address; None once the channel is closed.  OSError as the receive raises it."""
        received = receive_connection(self.channel, family, kind, self.server.socket.proto)
        if received is None:
            return None
        connection, client_address = received
        return limit_reads(connection, getattr(self.server, "read_timeout", None)), client_address

    def dispatched_served(self) -> None:
        """A passed connection was served: the worker takes one more (its credit)."""
        self.tell(IDLE)

    def serve(self, request: Any, client_address: Any) -> None:
        """Run the handler on one request exactly as a synchronous server would.

        The per-request path: two clock readings and plain stores on the slot
        (`take_request`, the live record, `record_request`, `request_done`)."""
        slot = self.slot
        began = monotonic()
        take_request(slot, began)
        live_record.begin(slot, client_address, began)
        outcome = "ok"
        server = self.server
        try:
            server.finish_request(request, client_address)
        except Exception:
            outcome = outcome_of_failure(request)
            server.handle_error(request, client_address)
        finally:
            # Count before the connection closes: once the client has its answer, the
            # scoreboard already shows the request.
            ended = monotonic()
            record_request(slot, ended - began, outcome)
            self.served += 1
            server.shutdown_request(request)
            if self.memory_limit and resident_memory() > self.memory_limit:
                self.over_memory_limit = True  # recycle: finish here, a fresh worker follows
            request_done(slot, ended)


class ListenerWait:
    """Where an accept-mode worker waits when the listen backlog is empty: the shared
    listener (EPOLLEXCLUSIVE where the system has it: one waiting worker is woken per
    connection) and the worker's self-pipe (SIGTERM), in one epoll (elsewhere poll)."""

    def __init__(self, listener_fd: int, wake_fd: int) -> None:
        self.epoll = getattr(select, "epoll", None)
        if self.epoll is not None:
            self.poller: Any = self.epoll()
            try:
                self.poller.register(listener_fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            except (AttributeError, OSError):  # no EPOLLEXCLUSIVE: every waiter wakes
                self.poller.register(listener_fd, select.EPOLLIN)
            self.poller.register(wake_fd, select.EPOLLIN)
        else:
            self.poller = select.poll()
            self.poller.register(listener_fd, select.POLLIN)
            self.poller.register(wake_fd, select.POLLIN)

    def wait(self, timeout: float) -> None:
        """Return once a connection may be waiting, a signal came, or `timeout` seconds."""
        if self.epoll is not None:
            self.poller.poll(timeout)
        else:
            self.poller.poll(timeout * 1000)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory() -> int:
    """This process's resident set size in bytes (Linux /proc); elsewhere its peak RSS."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def set_listener_heartbeat(listener: socket.socket, interval: float) -> bool:
    """Prepare the shared `listener` of an accept-mode pool (supervisor side, before the
    workers fork) so that a waiting worker wakes every `interval` seconds to beat.

    A stream listener is made non-blocking (workers accept until EAGAIN, then wait in
    `ListenerWait` with `interval` as timeout); a receive timeout left on it by an older
    sockherd (carried through an in-place upgrade) is cleared, so accepted sockets do not
    inherit it.  A datagram socket gets SO_RCVTIMEO: a blocking recvfrom() returns EAGAIN
    every `interval` seconds.  False if the system refused."""
    try:
        if listener.type == socket.SOCK_STREAM:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_TIMEOUT)
            listener.setblocking(False)
            return True
        seconds = int(interval)
        micros = int((interval - seconds) * 1_000_000)
        listener.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros)
        )
    except OSError:
        return False
    return True
