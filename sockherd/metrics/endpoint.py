"""The /metrics endpoint, served from the supervisor's own serve loop (no thread, no fork).

A tiny non-blocking HTTP/1.0 server: its listening socket and every scrape
connection are wake sources of the serve loop, so a scrape never blocks the
loop, and a slow or malicious scraper costs one fd until `CLIENT_DEADLINE`.
At most `MAX_CLIENTS` scrapes are served at once; further connections are
closed at once.  Requests: `GET /metrics` (text format 0.0.4, see
`exposition`), `GET /` (a pointer to /metrics); anything else gets 404 or 405.
The listening, accepting with back-off, deadlines and closing are
`server.nonblocking_listener`'s; this module is the HTTP on top.

Defences (settings in `endpoint_security`):

* A request line longer than `MAX_REQUEST_LINE` or not of the form
  `METHOD /target HTTP/1.x` gets 400 as soon as it is seen; a request head
  longer than `MAX_REQUEST` gets 431.  Nothing a client sends is kept beyond
  those bounds, so memory stays flat whatever arrives.
* Basic auth: with `metrics_basic_auth` every request without the right
  credentials gets 401 and `WWW-Authenticate: Basic realm="sockherd"`.
* TLS: with `metrics_tls_certfile`, each connection goes through these phases,
  every step non-blocking and driven by the loop's wake sources::

      SNIFF --first byte 0x16--> HANDSHAKE --done--> REQUEST --> RESPONSE --> closed
        `--anything else: 400 "this endpoint speaks HTTPS" in plain text

  `do_handshake()` raising SSLWantRead/WriteError just changes what the loop
  waits for, so a client stalled mid-handshake blocks nothing, and it is
  dropped at its `CLIENT_DEADLINE` like any other slow client.

The exposition itself carries figures only: no environment, paths or command
line (the tests check this).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..server import carried_listeners
from ..server.accept_backoff import AcceptBackoff
from ..server.nonblocking_listener import AddSource, Client, NonBlockingListener, RemoveSource
from .endpoint_security import REALM, BasicAuth
from .exposition import CONTENT_TYPE, render

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

MAX_REQUEST = 8192  # the whole request head
MAX_REQUEST_LINE = 1024
MAX_CLIENTS = 16
CLIENT_DEADLINE = 10.0

_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.[01]\r?")
_BLOCKED: tuple[type[BaseException], ...] = (BlockingIOError, InterruptedError)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}

# Connection phases (see the module docstring).
SNIFF, HANDSHAKE, REQUEST, RESPONSE = "sniff", "handshake", "request", "response"


class _Client(Client):
    """One scrape: its phase, what it sent so far and what it is still owed."""

    __slots__ = ("received", "outgoing", "phase", "tls")

    def __init__(self, connection: socket.socket, phase: str) -> None:
        super().__init__(connection)
        self.received = b""
        self.outgoing: memoryview | None = None
        self.phase = phase
        self.tls: ssl.SSLSocket | None = None  # `connection` once the handshake starts


class MetricsEndpoint:
    """Serves the `collectors` over HTTP(S) on `address`, driven by wake sources of a loop.

    `tls`: an SSLContext to serve HTTPS with (see `endpoint_security.tls_context`);
    `basic_auth`: the credentials every request must carry.
    """

    def __init__(
        self,
        address: tuple[str, int],
        collectors: list[Any],
        add_source: AddSource,
        remove_source: RemoveSource,
        *,
        tls: ssl.SSLContext | None = None,
        basic_auth: BasicAuth | None = None,
    ) -> None:
        self.collectors = collectors
        self._tls = tls
        self._auth = basic_auth
        self._ssl_want_read: tuple[type[BaseException], ...] = ()
        self._ssl_want_write: tuple[type[BaseException], ...] = ()
        if tls is not None:
            import ssl

            self._ssl_want_read = (ssl.SSLWantReadError,)
            self._ssl_want_write = (ssl.SSLWantWriteError,)
        self.scrapes = 0
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        key = carried_listeners.key_of("metrics", family, socket.SOCK_STREAM, address)
        carried = carried_listeners.take(key)  # an in-place upgrade carried it over
        listener = carried or socket.socket(family, socket.SOCK_STREAM)
        try:
            if carried is None:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(address)
                listener.listen(MAX_CLIENTS)
                carried_listeners.remember(key, listener)
        except OSError as error:
            listener.close()
            from ..server.socket_servers import bind_error

            raise bind_error(error, family, address) from error
        self.address = listener.getsockname()[:2]
        self._where = f"the metrics endpoint {self.address[0]}:{self.address[1]}"
        if basic_auth is not None and tls is None and not _is_loopback(self.address[0]):
            log.warning(
                "%s uses basic auth without TLS: the password crosses the network in clear "
                "text; set metrics_tls_certfile/metrics_tls_keyfile",
                self._where,
            )
        self._server = NonBlockingListener(
            listener,
            self._where,
            add_source,
            remove_source,
            admit=self._admit,
            on_ready=self._on_ready,
            client_deadline=CLIENT_DEADLINE,
            max_clients=MAX_CLIENTS,
        )

    @property
    def listener(self) -> socket.socket:
        """The listening socket."""
        return self._server.listener

    @property
    def accept_backoff(self) -> AcceptBackoff:
        """The accept failures and back-off episode of the endpoint's listener."""
        return self._server.accept_backoff

    @property
    def _clients(self) -> Mapping[int, _Client]:
        """The scrapes in progress, by fd: the listener's table, read-only."""
        return self._server.clients

    # --- connections ------------------------------------------------------------------

    def _admit(self, connection: socket.socket) -> _Client:
        return _Client(connection, SNIFF if self._tls is not None else REQUEST)

    def _on_ready(self, client: _Client) -> None:
        try:
            if client.phase == SNIFF:
                self._sniff(client)
            elif client.phase == HANDSHAKE:
                self._handshake(client)
            elif client.phase == REQUEST:
                self._read(client)
            else:
                self._write(client)
        except OSError as error:  # includes ssl.SSLError: a failed handshake, a reset
            log.debug("%s: dropping a client (%s)", self._where, error)
            self._server.drop(client)

    def _sniff(self, client: _Client) -> None:
        """TLS endpoint: a TLS handshake starts with byte 0x16; answer anything else in plain."""
        assert self._tls is not None
        try:
            first = client.connection.recv(1, socket.MSG_PEEK)
        except _BLOCKED:
            return
        if not first:
            self._server.drop(client)
            return
        if first != b"\x16":
            try:  # consume the plain request, so that closing sends a FIN, not a reset
                client.connection.recv(MAX_REQUEST)
            except _BLOCKED:
                pass
            host, port = self.address
            self._respond(
                client, 400, f"this endpoint speaks HTTPS: use https://{host}:{port}/metrics\n"
            )
            return
        client.connection = client.tls = self._tls.wrap_socket(
            client.connection, server_side=True, do_handshake_on_connect=False
        )
        client.phase = HANDSHAKE
        self._handshake(client)

    def _handshake(self, client: _Client) -> None:
        assert client.tls is not None
        try:
            client.tls.do_handshake()
        except self._ssl_want_read:
            self._server.watch(client, writable=False)
            return
        except self._ssl_want_write:
            self._server.watch(client, writable=True)
            return
        client.phase = REQUEST
        self._server.watch(client, writable=False)
        self._read(client)  # the request may have come with the handshake's last flight

    def _read(self, client: _Client) -> None:
        connection = client.connection
        while True:
            try:
                chunk = connection.recv(MAX_REQUEST)
            except _BLOCKED + self._ssl_want_read:
                self._server.watch(client, writable=False)
                return
            except self._ssl_want_write:
                self._server.watch(client, writable=True)
                return
            if not chunk:
                self._server.drop(client)
                return
            client.received += chunk
            # TLS may hold decrypted bytes the fd will never signal again: take them now.
            pending = getattr(connection, "pending", None)
            if len(client.received) > MAX_REQUEST or not (pending and pending()):
                break
        self._evaluate(client)

    def _evaluate(self, client: _Client) -> None:
        """Answer the request in `client.received` once it is complete (or clearly bad)."""
        received = client.received
        line_end = received.find(b"\n")
        line = received if line_end < 0 else received[:line_end]
        if len(line) > MAX_REQUEST_LINE:
            self._respond(client, 400, f"request line longer than {MAX_REQUEST_LINE} bytes\n")
            return
        if line_end < 0:
            return  # the request line is not complete yet
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            self._respond(client, 400, "malformed request line: expected 'GET /metrics HTTP/1.1'\n")
            return
        head_end = received.find(b"\r\n\r\n")
        if head_end < 0:
            head_end = received.find(b"\n\n")
        if head_end < 0:
            if len(received) >= MAX_REQUEST:
                self._respond(client, 431, f"request head longer than {MAX_REQUEST} bytes\n")
            return
        headers = _headers(received[line_end + 1 : head_end])
        method, target = match.group(1).decode(), match.group(2).decode()
        if self._auth is not None and not self._auth.allows(headers.get("authorization")):
            self._respond(
                client,
                401,
                "authentication required\n",
                extra_headers=(f'WWW-Authenticate: Basic realm="{REALM}"',),
            )
        elif method not in ("GET", "HEAD"):
            self._respond(
                client, 405, "only GET is supported\n", extra_headers=("Allow: GET, HEAD",)
            )
        elif target.split("?")[0] == "/metrics":
            body, content_type = self.render(headers.get("accept", ""))
            self.scrapes += 1
            self._respond(client, 200, b"" if method == "HEAD" else body, content_type=content_type)
        elif target == "/":
            self._respond(client, 200, "sockherd: metrics at /metrics\n")
        else:
            self._respond(client, 404, "not found: try /metrics\n")

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body (text format 0.0.4, whatever `accept` asks) and its type."""
        return render(f for c in self.collectors for f in c.collect()), CONTENT_TYPE

    def _respond(
        self,
        client: _Client,
        status: int,
        body: bytes | str,
        content_type: str = "text/plain; charset=utf-8",
        extra_headers: tuple[str, ...] = (),
    ) -> None:
        if isinstance(body, str):
            body = body.encode()
        head = "".join(
            [
                f"HTTP/1.0 {status} {_REASONS.get(status, '')}\r\n",
                f"Content-Type: {content_type}\r\n",
                f"Content-Length: {len(body)}\r\n",
                *(header + "\r\n" for header in extra_headers),
                "Connection: close\r\n\r\n",
            ]
        ).encode("latin-1")
        client.received = b""
        client.phase = RESPONSE
        client.outgoing = memoryview(head + body)
        self._server.watch(client, writable=True)
        self._write(client)

    def _write(self, client: _Client) -> None:
        assert client.outgoing is not None
        try:
            sent = client.connection.send(client.outgoing)
        except _BLOCKED + self._ssl_want_write:
            self._server.watch(client, writable=True)
            return
        except self._ssl_want_read:
            self._server.watch(client, writable=False)
            return
        client.outgoing = client.outgoing[sent:]
        if not client.outgoing:
            self._finish(client)

    def _finish(self, client: _Client) -> None:
        """The response is out: close the connection, TLS with its close_notify."""
        if client.tls is not None:
            try:  # send close_notify (without waiting for the peer's)
                client.tls.unwrap()
            except (OSError, ValueError):
                pass
        self._server.drop(client)

    # --- housekeeping ---------------------------------------------------------------

    def accept_errors(self) -> dict[str, int]:
        """Failed accepts of the endpoint's listener, by errno name."""
        return self._server.accept_errors()

    def expire_slow_clients(self) -> None:
        """Drop scrapers that have not finished within CLIENT_DEADLINE; watch the listener
        again once an accept back-off has run out.  Call once per loop iteration."""
        self._server.expire_slow_clients()

    def close(self) -> None:
        """Close every connection and the listener."""
        self._server.close()

    def close_in_child(self) -> None:
        """In a forked child: close the inherited sockets without touching the loop."""
        self._server.close_in_child()


def _headers(block: bytes) -> dict[str, str]:
    """Header name (lower case) -> value, from the lines after the request line."""
    headers = {}
    for raw in block.decode("latin-1").splitlines():
        name, colon, value = raw.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
