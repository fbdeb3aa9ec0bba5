"""Parking: a request thread that waits for its client does not count as busy.

Theory of operation
-------------------
A threaded worker (`workers.threaded_worker`) runs up to `threads` requests at
once, but a connection kept alive between two requests (HTTP/1.1 keep-alive, a
line protocol between two lines) only waits for its client.  If it counted as
busy, 64 keep-alive clients on 4 workers of 8 threads would leave 32 clients
waiting for a whole connection's lifetime.  So a request thread that is about
to block reading from its connection *parks* first: it tells its worker (the
`Waiter`), which counts one request fewer in progress and may take another
connection, and *unparks* once the read returns.

The handler's connection is made a `ParkingSocket` (or, under `read_timeout`,
a `ParkingDeadlineSocket`) by changing its class in place: same object, same
fd, same timeout and deadline.  Every blocking read parks and unparks around
the system call: no extra system call to learn whether it would wait (on a
kept-alive connection it nearly always does), and park/unpark are a few plain
stores under the worker's lock (about 1 µs), cheaper than a failed
non-blocking `recv`.  A socket of any other class (TLS, a subclass the server
built) is left alone: it holds its thread while it waits, as in a synchronous
worker.

Only the thread serving the connection parks (the waiter is thread-local and
set by the worker around the handler); a read from any other thread, or
outside a threaded worker, is a plain read.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from ..server.read_deadline import ReadDeadlineSocket

_T = TypeVar("_T")


class Waiter(Protocol):
    """Told by a parking read: the thread serving connection `key` waits for its client."""

    def park(self, key: int) -> None:
        """The thread stops counting as busy (it is about to wait for its client)."""

    def unpark(self, key: int) -> None:
        """The thread counts as busy again (its read returned)."""


class _Serving(threading.local):
    waiter: Waiter | None = None
    key = 0


_serving = _Serving()


def serve_with_parking(waiter: Waiter | None, key: int = 0) -> None:
    """From now on, the calling thread's reads from a parking socket park through
    `waiter` as connection `key`; None: they no longer park (the request is over)."""
    _serving.waiter = waiter
    _serving.key = key


def enable_parking(connection: object) -> object:
    """`connection`, made to park its thread while it waits for its client if it is a
    plain socket or a read-deadline socket (its class is changed in place); any other
    object is returned as it is."""
    kind = type(connection)
    if kind is socket.socket:
        connection.__class__ = ParkingSocket
    elif kind is ReadDeadlineSocket:
        connection.__class__ = ParkingDeadlineSocket
    return connection


class ParkingSocket(socket.socket):
    """A connected socket whose blocking reads park the serving thread (see the module)."""

    __slots__ = ()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """socket.recv(), with the serving thread parked while the call lasts."""
        return self._read(super().recv, bufsize, flags)

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0) -> int:  # type: ignore[override]
        """socket.recv_into() (what makefile() reads with), the serving thread parked."""
        return self._read(super().recv_into, buffer, nbytes, flags)

    def _read(self, read: Callable[..., _T], *args: object) -> _T:
        waiter = _serving.waiter
        if waiter is None or self.gettimeout() == 0.0:  # non-blocking: it never waits
            return read(*args)
        key = _serving.key
        waiter.park(key)
        try:
            return read(*args)
        finally:
            waiter.unpark(key)


class ParkingDeadlineSocket(ParkingSocket, ReadDeadlineSocket):
    """A `ReadDeadlineSocket` whose reads park the serving thread while they wait."""

    __slots__ = ()
