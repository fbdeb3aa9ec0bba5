"""`read_timeout`: a slow client cannot hold a thread, child or worker for long.

Theory of operation
-------------------
A plain socket timeout (`settimeout()`) bounds each call, so it does not stop a
slowloris client: one byte every few seconds completes every `recv()` in time,
and a buffered `readline()` keeps asking for more.  A stream server with
`read_timeout` set therefore gives its handler a `ReadDeadlineSocket`: a
`socket.socket` whose reads share one *deadline*, `read_timeout` seconds after
the connection was accepted.  Each reply the server sends (a completed send
on the connection) starts a fresh deadline, so a keep-alive client gets
`read_timeout` seconds for each request, and an idle one is cut off after
`read_timeout`.  A read still waiting at the deadline raises
`TimeoutError("timed out")`, which is what a socket timeout raises, so
handlers and `http.server` treat it as they treat any socket timeout.  A send
may take at most `read_timeout` too (a client that never reads its reply).

Until the handler takes over, `gettimeout()` reports `read_timeout`.  A handler
that sets a timeout of its own (`StreamRequestHandler.timeout`, which
`setup()` applies with `settimeout()`, or any `settimeout()`/`setblocking()`
call) ends the deadline: from then on the socket behaves exactly like a plain
socket with the handler's timeout.

A socket that hit its deadline remembers it (`read_timed_out`), so the server
can report the request as a `timeout` outcome in one log line instead of a
traceback (see `BaseServer.handle_error`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from time import monotonic
from typing import Any, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# A read due at or after its deadline still takes data the kernel already holds:
# CPython polls for at least this long (rounded up to 1 ms) before it gives up.
_LAST_CHANCE = 1e-6


class ReadDeadlineSocket(socket.socket):
    """A connected stream socket whose reads must finish by a deadline (see the module)."""

    __slots__ = ("read_timeout", "read_timed_out", "_deadline")

    read_timeout: float
    read_timed_out: bool
    _deadline: float | None

    @classmethod
    def adopt(cls, connection: socket.socket, read_timeout: float) -> ReadDeadlineSocket:
        """Take over `connection`'s fd (the old object is detached) with a deadline
        `read_timeout` seconds from now.  Raises ValueError unless read_timeout > 0."""
        check_read_timeout(read_timeout)
        adopted = cls(connection.family, connection.type, connection.proto, connection.detach())
        adopted.read_timeout = read_timeout
        adopted.read_timed_out = False
        socket.socket.settimeout(adopted, read_timeout)
        adopted._deadline = monotonic() + read_timeout
        return adopted

    # --- the handler takes over ------------------------------------------------------

    def settimeout(self, value: float | None) -> None:
        """Set a timeout of the caller's own; the read deadline no longer applies."""
        self._deadline = None
        super().settimeout(value)

    def setblocking(self, flag: bool) -> None:
        """Set blocking mode as the caller wants; the read deadline no longer applies."""
        self._deadline = None
        super().setblocking(flag)

    # --- reads share the deadline ------------------------------------------------------

    def recv(self, *args: Any) -> bytes:
        """socket.recv(), bounded by the read deadline."""
        self._arm_read()
        return self._timed(super().recv, *args)

    def recv_into(self, *args: Any) -> int:
        """socket.recv_into() (what makefile() reads with), bounded by the read deadline."""
        self._arm_read()
        return self._timed(super().recv_into, *args)

    def recvfrom(self, *args: Any) -> tuple[bytes, Any]:
        """socket.recvfrom(), bounded by the read deadline."""
        self._arm_read()
        return self._timed(super().recvfrom, *args)

    def recvfrom_into(self, *args: Any) -> tuple[int, Any]:
        """socket.recvfrom_into(), bounded by the read deadline."""
        self._arm_read()
        return self._timed(super().recvfrom_into, *args)

    def recvmsg(self, *args: Any) -> Any:
        """socket.recvmsg(), bounded by the read deadline."""
        self._arm_read()
        return self._timed(super().recvmsg, *args)

    def recvmsg_into(self, *args: Any) -> Any:
        """socket.recvmsg_into(), bounded by the read deadline."""
        self._arm_read()
        return self._timed(super().recvmsg_into, *args)

    # --- a completed send starts a new deadline ---------------------------------------

    def send(self, *args: Any) -> int:
        """socket.send(), bounded by read_timeout; then the next read gets read_timeout."""
        return self._timed_send(super().send, *args)

    def sendall(self, *args: Any) -> None:
        """socket.sendall(), bounded by read_timeout; then the next read gets read_timeout."""
        self._timed_send(super().sendall, *args)

    def sendto(self, *args: Any) -> int:
        """socket.sendto(), bounded by read_timeout; then the next read gets read_timeout."""
        return self._timed_send(super().sendto, *args)

    def sendmsg(self, *args: Any) -> int:
        """socket.sendmsg(), bounded by read_timeout; then the next read gets read_timeout."""
        return self._timed_send(super().sendmsg, *args)

    # --- internals ------------------------------------------------------------------

    def _arm_read(self) -> None:
        if self._deadline is not None:
            remaining = self._deadline - monotonic()
            socket.socket.settimeout(self, max(remaining, _LAST_CHANCE))

    def _timed(self, call: Callable[..., _T], *args: Any) -> _T:
        try:
            return call(*args)
        except TimeoutError:
            if self._deadline is not None:
                self.read_timed_out = True
            raise

    def _timed_send(self, call: Callable[..., _T], *args: Any) -> _T:
        if self._deadline is None:
            return call(*args)
        socket.socket.settimeout(self, self.read_timeout)
        result = self._timed(call, *args)
        if self._deadline is not None:
            self._deadline = monotonic() + self.read_timeout
        return result


def check_read_timeout(read_timeout: float | None) -> None:
    """Raise ValueError unless `read_timeout` is None or a positive number of seconds."""
    if read_timeout is not None and not read_timeout > 0:
        raise ValueError(
            f"read_timeout must be a positive number of seconds or None, not {read_timeout!r}"
        )


def limit_reads(connection: Any, read_timeout: float | None) -> Any:
    """`connection` with its reads bounded by `read_timeout` (see the module).

    Unchanged when read_timeout is None; a socket of another type (a subclass the
    caller built) only gets `settimeout(read_timeout)`.  Raises ValueError for a
    read_timeout that is not positive.
    """
    if read_timeout is None:
        return connection
    if type(connection) is not socket.socket:
        check_read_timeout(read_timeout)
        connection.settimeout(read_timeout)  # each call bounded, at least
        return connection
    return ReadDeadlineSocket.adopt(connection, read_timeout)


def read_timed_out(request: Any) -> bool:
    """True if `request` is a connection that was cut off at its read deadline."""
    return bool(getattr(request, "read_timed_out", False)) and isinstance(
        request, ReadDeadlineSocket
    )


def report_read_timeout(request: Any, client_address: Any) -> bool:
    """If `request` was cut off by its read_timeout, log it in one WARNING line and return
    True (handle_error() then prints no traceback)."""
    if not read_timed_out(request):
        return False
    log.warning(
        "connection from %s timed out (read_timeout=%g s); closed",
        client_address,
        request.read_timeout,
    )
    return True


def outcome_of_failure(request: Any) -> str:
    """The outcome of a request whose handler raised: "timeout" if read_timeout cut its
    connection off, else "error"."""
    return "timeout" if read_timed_out(request) else "error"
