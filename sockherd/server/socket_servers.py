"""TCPServer, UDPServer and their Unix-domain twins: the server owns one bound socket.

Two things differ from CPython on purpose:

* `request_queue_size` defaults to `socket.SOMAXCONN` (as CPython 3.15 does,
  gh-80184) instead of 5, so a burst of connects is queued, not dropped into
  one-second SYN retries.
* A failed `bind()` raises `BindError`, an OSError with the same `errno`, whose
  message names the address and says what to do about it.

And one setting CPython lacks: `read_timeout` (stream servers; default None,
CPython's behaviour).  When set, `get_request()` hands out each connection with
its reads bounded by a deadline, so a client that sends nothing or trickles
bytes is cut off after `read_timeout` seconds (see `read_deadline`).
"""

from __future__ import annotations

import _socket
import errno
import socket
from typing import Any

from . import carried_listeners
from .base_server import BaseServer
from .read_deadline import limit_reads

# The C-level family and type of a socket, as ints: socket.socket's properties of the same
# names build an enum member on every call, and socket.accept() calls both.
_FAMILY_OF = _socket.socket.family.__get__
_TYPE_OF = _socket.socket.type.__get__


def accept(listener: socket.socket) -> tuple[socket.socket, Any]:
    """`listener.accept()`; for a plain `socket.socket`, the same steps without the two
    enum conversions that cost about a third of socket.accept()'s Python time."""
    if type(listener) is not socket.socket:
        return listener.accept()
    fd, address = listener._accept()  # type: ignore[attr-defined]
    connection = socket.socket(_FAMILY_OF(listener), _TYPE_OF(listener), listener.proto, fd)
    if socket.getdefaulttimeout() is None and listener.gettimeout():
        connection.setblocking(True)  # as socket.accept(): where accepted fds inherit O_NONBLOCK
    return connection, address


class BindError(OSError):
    """bind() failed; `errno` is the kernel's, the message names the address and a remedy."""


def _describe_address(family: int, address: Any) -> str:
    if hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
        path = address.decode(errors="replace") if isinstance(address, bytes) else address
        return f"Unix socket path {path!r}"
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0] or '0.0.0.0'} port {address[1]}"
    return repr(address)


def bind_error(error: OSError, family: int, address: Any) -> OSError:
    where = _describe_address(family, address)
    unix = hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX
    if error.errno == errno.EADDRINUSE and unix:
        advice = (
            f"cannot bind {where}: the path already exists. Remove the stale socket file "
            "if no server uses it, or choose another path"
        )
    elif error.errno == errno.EADDRINUSE:
        advice = (
            f"cannot listen on {where}: the address is already in use by another socket. "
            "Stop the process that holds it or choose another port"
        )
    elif error.errno == errno.EADDRNOTAVAIL:
        advice = f"cannot bind {where}: that address does not belong to this machine"
    elif error.errno == errno.EACCES and not unix:
        advice = (
            f"cannot bind {where}: permission denied. Ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE; use a higher port"
        )
    elif error.errno in (errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.EROFS) and unix:
        advice = (
            f"cannot bind {where}: {error.strerror}. "
            "Check that the directory exists and is writable"
        )
    else:
        return error
    return BindError(error.errno, advice)


class TCPServer(BaseServer):
    """Base class for various socket-based server classes.

    Defaults to synchronous IP stream (i.e., TCP).

    Methods for the caller:

    - __init__(server_address, RequestHandlerClass, bind_and_activate=True)
    - serve_forever(poll_interval=0.5)
    - shutdown()
    - handle_request()  # if you don't use serve_forever()
    - fileno() -> int   # for selector

    Methods that may be overridden:

    - server_bind()
    - server_activate()
    - get_request() -> request, client_address
    - handle_timeout()
    - verify_request(request, client_address)
    - process_request(request, client_address)
    - shutdown_request(request)
    - close_request(request)
    - handle_error()

    Methods for derived classes:

    - finish_request(request, client_address)

    Class variables that may be overridden by derived classes or
    instances:

    - timeout
    - address_family
    - socket_type
    - request_queue_size (only for stream sockets)
    - allow_reuse_address
    - allow_reuse_port
    - read_timeout (sockherd; only for stream sockets)

    Instance variables:

    - server_address
    - RequestHandlerClass
    - socket
    """

    address_family = socket.AF_INET

    socket_type = socket.SOCK_STREAM

    request_queue_size = getattr(socket, "SOMAXCONN", 5)

    allow_reuse_address = False

    allow_reuse_port = False

    # sockherd: seconds a client gets to send each request (from the accept, and again
    # after each reply); None (CPython's behaviour) waits forever.  See `read_deadline`.
    read_timeout: float | None = None

    def __init__(
        self, server_address: Any, RequestHandlerClass: Any, bind_and_activate: bool = True
    ) -> None:
        """Constructor.  May be extended, do not override."""
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Called by constructor to bind the socket.

        May be overridden.

        """
        key = carried_listeners.key_of(
            "listen", self.address_family, self.socket_type, self.server_address
        )
        carried = carried_listeners.take(key)  # an in-place upgrade carried it over
        if carried is not None:
            self.socket.close()
            self.socket = carried
            self.server_address = carried.getsockname()
            return
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Linux >= 6.12.9 rejects SO_REUSEPORT on AF_UNIX (gh-128916).
        if (
            self.allow_reuse_port
            and hasattr(socket, "SO_REUSEPORT")
            and self.address_family in (socket.AF_INET, socket.AF_INET6)
        ):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.socket.bind(self.server_address)
        except OSError as error:
            friendly = bind_error(error, self.address_family, self.server_address)
            if friendly is error:
                raise
            raise friendly from error
        carried_listeners.remember(key, self.socket)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Called by constructor to activate the server.

        May be overridden.

        """
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """Called to clean-up the server.

        May be overridden.

        """
        self.socket.close()
        BaseServer.server_close(self)

    def fileno(self) -> int:
        """Return socket file number.

        Interface required by selector.

        """
        return self.socket.fileno()

    def get_request(self) -> Any:
        """Get the request and client address from the socket.

        May be overridden.

        sockherd: with `read_timeout` set, the connection's reads are bounded by a
        deadline before anything else sees it (an override that wraps the
        connection, e.g. in TLS, should start from super().get_request()).
        A read_timeout that is not positive raises ValueError.
        """
        connection, client_address = accept(self.socket)
        return self._limit_reads(connection), client_address

    def _limit_reads(self, connection: Any) -> Any:
        """Apply `read_timeout` to a connection just accepted (PreforkMixIn defers it)."""
        return limit_reads(connection, self.read_timeout)

    def shutdown_request(self, request: Any) -> None:
        """Called to shutdown and close an individual request."""
        try:
            # explicitly shutdown.  socket.close() merely releases
            # the socket and waits for GC to perform the actual close.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # some platforms may raise ENOTCONN here
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""
        request.close()


class UDPServer(TCPServer):
    """UDP server class."""

    allow_reuse_address = False

    allow_reuse_port = False

    socket_type = socket.SOCK_DGRAM

    max_packet_size = 8192

    def get_request(self) -> Any:
        """Receive one datagram; the request is `(data, server_socket)`.  May be overridden."""
        data, client_addr = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_addr

    def server_activate(self) -> None:
        """No need to call listen() for UDP."""
        pass

    def shutdown_request(self, request: Any) -> None:
        """No need to shutdown anything."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """No need to close anything: the reply socket is the shared server socket."""
        pass


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        """A TCPServer on a Unix-domain stream socket; the socket file is never unlinked."""

        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        """A UDPServer on a Unix-domain datagram socket; clients must bind to get replies."""

        address_family = socket.AF_UNIX
