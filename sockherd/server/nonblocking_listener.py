"""A small non-blocking server that lives inside a serve loop: the listener and client table
under the supervisor's control socket and the /metrics endpoint.

Theory of operation
-------------------
Some listeners are served by the serve loop itself, not by a worker or a thread.  They
must never block that loop, and no client may hold it, or an fd, for long.  What they
have in common is here; each owner keeps only its protocol.

* Wake sources.  The listening socket and every accepted connection are non-blocking
  and are wake sources of the loop: `add_source(fd, callback, writable)` and
  `remove_source(fd)`, normally a server's `add_wake_source` and `remove_wake_source`.
  The listener wakes the accept loop; a client wakes the owner's `on_ready(client)`
  whenever its fd is readable, or writable once the owner has called
  `watch(client, writable=True)`.

* Accepting.  One wake-up accepts until the backlog is empty.  A failed accept goes to
  an `AcceptBackoff`: harmless races are only counted; EMFILE and the like start an
  episode with one warning, and the listener is taken out of the loop (a readable
  listener that cannot be accepted from would spin it) until `paused_for()` is 0,
  which `expire_slow_clients()` checks on every pass.  Waiting connections stay in
  the kernel's backlog meanwhile.  A connection beyond `max_clients` is accepted and
  closed at once, so it costs nothing and cannot fill the backlog.

* Clients.  The owner's `admit(connection)` turns each new connection into its client
  record, a `Client` subclass carrying the owner's protocol state.  The listener stamps
  its deadline, `client_deadline` seconds from then, and keeps it in `clients`, by fd.
  `expire_slow_clients()` drops every client past its deadline, whatever it is doing:
  a slow sender, a stalled TLS handshake, a peer that never reads its reply.

* Ending.  `drop(client)` unregisters and closes one client; the owner calls it when it
  is done with one, the listener when a deadline passes.  Dropping a record that is no
  longer in the table does nothing, so a stale record cannot close a newer client
  that was given the same fd.  `close()` drops every client and closes the listener.
  `close_in_child()`, in a forked child, only closes the inherited sockets: the loop's
  selector is shared with the parent, and unregistering there would deafen the parent.

Everything runs in the serving thread; nothing here blocks or sleeps.
"""

from __future__ import annotations

import functools
import math
import socket
import time
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

from .accept_backoff import AcceptBackoff


class AddSource(Protocol):
    """How the listener asks the loop to run `callback` when `fd` is readable (or writable)."""

    def __call__(self, fd: int, callback: Callable[[], None], /, writable: bool = False) -> None:
        """Watch `fd`; again for the same fd changes the callback and the interest."""


RemoveSource = Callable[[int], None]


class Client:
    """One accepted connection: its socket, its deadline and what readiness wakes it.

    Owners subclass it to add their protocol state.  `connection` may be replaced by a
    socket on the same fd (a TLS wrapper); `fd` stays the key in the listener's table.
    """

    __slots__ = ("connection", "fd", "deadline", "writable")

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.fd = connection.fileno()
        self.deadline = math.inf  # stamped by the listener when it admits the client
        self.writable = False


ClientT = TypeVar("ClientT", bound=Client)


class NonBlockingListener(Generic[ClientT]):
    """A listening socket and its clients, served by wake sources of a loop (see the module).

    `listener`: a bound, listening socket (made non-blocking here); `where`: how log
    lines name it ("the control socket '/run/x.sock'"); `admit(connection)`: the owner's
    record for a new, non-blocking connection (if it raises, the connection is closed and
    the error propagates); `on_ready(client)`: the client's fd is
    ready for what it waits for; `client_deadline`: seconds a client may stay in all;
    `max_clients`: connections beyond it are closed at once (None: no limit).
    The listener is watched from the moment this is made.
    """

    def __init__(
        self,
        listener: socket.socket,
        where: str,
        add_source: AddSource,
        remove_source: RemoveSource,
        *,
        admit: Callable[[socket.socket], ClientT],
        on_ready: Callable[[ClientT], None],
        client_deadline: float,
        max_clients: int | None = None,
    ) -> None:
        self.listener = listener
        self.where = where
        self.client_deadline = client_deadline
        self.max_clients = max_clients
        self.accept_backoff = AcceptBackoff()
        self._add_source = add_source
        self._remove_source = remove_source
        self._admit = admit
        self._on_ready = on_ready
        self._clients: dict[int, ClientT] = {}
        self._paused = False
        listener.setblocking(False)
        add_source(listener.fileno(), self._accept)

    @property
    def clients(self) -> Mapping[int, ClientT]:
        """The clients being served, by fd (read-only: `drop()` removes one)."""
        return self._clients

    @property
    def paused(self) -> bool:
        """Whether accepts are paused after a resource error (the listener is not watched)."""
        return self._paused

    def accept_errors(self) -> dict[str, int]:
        """Failed accepts of this listener, by errno name."""
        return dict(self.accept_backoff.failures)

    # --- the loop's callbacks ------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # EMFILE & co. would leave the listener readable and spin the loop: stop
                # watching it for a while, with one warning per episode.
                self.accept_backoff.failed(error, self.where)
                if self.accept_backoff.paused_for():
                    self._remove_source(self.listener.fileno())
                    self._paused = True
                return
            self.accept_backoff.succeeded(self.where)
            if self.max_clients is not None and len(self._clients) >= self.max_clients:
                connection.close()
                continue
            connection.setblocking(False)
            try:
                client = self._admit(connection)
            except BaseException:
                connection.close()
                raise
            client.deadline = time.monotonic() + self.client_deadline
            self._clients[client.fd] = client
            self._add_source(client.fd, functools.partial(self._ready, client))

    def _ready(self, client: ClientT) -> None:
        # The loop may still hold an event for a client dropped earlier in the same pass.
        if self._clients.get(client.fd) is client:
            self._on_ready(client)

    # --- what the owner calls ------------------------------------------------------------

    def watch(self, client: ClientT, writable: bool) -> None:
        """Wake `on_ready(client)` when its fd is writable (True) or readable (False) next."""
        if client.writable != writable and self._clients.get(client.fd) is client:
            client.writable = writable
            self._add_source(client.fd, functools.partial(self._ready, client), writable)

    def drop(self, client: ClientT) -> None:
        """Stop watching `client` and close its connection; nothing if already dropped."""
        if self._clients.get(client.fd) is not client:
            return
        del self._clients[client.fd]
        self._remove_source(client.fd)
        client.connection.close()

    def expire_slow_clients(self) -> None:
        """Drop clients past their deadline, and watch the listener again once an accept
        back-off has run out.  Call once per loop pass."""
        if self._paused and not self.accept_backoff.paused_for():
            self._paused = False
            self._add_source(self.listener.fileno(), self._accept)
        now = time.monotonic()
        for client in [c for c in self._clients.values() if now > c.deadline]:
            self.drop(client)

    def close(self) -> None:
        """Drop every client, stop watching the listener and close it.  Idempotent."""
        for client in list(self._clients.values()):
            self.drop(client)
        if self.listener.fileno() >= 0:
            self._remove_source(self.listener.fileno())
            self.listener.close()

    def close_in_child(self) -> None:
        """In a forked child: close the inherited sockets without touching the loop."""
        for client in self._clients.values():
            client.connection.close()
        self._clients.clear()
        self.listener.close()
