"""The /metrics endpoint, served from the supervisor's own serve loop (no thread, no fork).

A tiny non-blocking HTTP/1.0 server: its listening socket and every scrape
connection are wake sources of the serve loop, so a scrape never blocks the
loop, and a slow or malicious scraper costs one fd until `CLIENT_DEADLINE`.
At most `MAX_CLIENTS` scrapes are served at once; further connections are
closed at once.  Requests: `GET /metrics` (text format 0.0.4, see
`exposition`), `GET /` (a pointer to /metrics); anything else gets 404 or 405.

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

import functools
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ..server.accept_backoff import AcceptBackoff
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


class _Client:
    __slots__ = ("connection", "received", "outgoing", "deadline", "phase", "writable")

    def __init__(self, connection: socket.socket, phase: str) -> None:
        self.connection = connection
        self.received = b""
        self.outgoing: memoryview | None = None
        self.deadline = time.monotonic() + CLIENT_DEADLINE
        self.phase = phase
        self.writable = False


class MetricsEndpoint:
    """Serves the `collectors` over HTTP(S) on `address`, driven by wake sources of a loop.

    `tls`: an SSLContext to serve HTTPS with (see `endpoint_security.tls_context`);
    `basic_auth`: the credentials every request must carry.
    """

    def __init__(
        self,
        address: tuple[str, int],
        collectors: list[Any],
        add_source: Callable[..., None],
        remove_source: Callable[[int], None],
        *,
        tls: ssl.SSLContext | None = None,
        basic_auth: BasicAuth | None = None,
    ) -> None:
        self.collectors = collectors
        self._add_source = add_source
        self._remove_source = remove_source
        self._clients: dict[int, _Client] = {}
        self._tls = tls
        self._auth = basic_auth
        self._ssl_want_read: tuple[type[BaseException], ...] = ()
        self._ssl_want_write: tuple[type[BaseException], ...] = ()
        if tls is not None:
            import ssl

            self._ssl_want_read = (ssl.SSLWantReadError,)
            self._ssl_want_write = (ssl.SSLWantWriteError,)
        self.scrapes = 0
        self.accept_backoff = AcceptBackoff()
        self._paused = False
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(MAX_CLIENTS)
        except OSError as error:
            listener.close()
            from ..server.socket_servers import bind_error

            raise bind_error(error, family, address) from error
        listener.setblocking(False)
        self.listener = listener
        self.address = listener.getsockname()[:2]
        self._where = f"the metrics endpoint {self.address[0]}:{self.address[1]}"
        if basic_auth is not None and tls is None and not _is_loopback(self.address[0]):
            log.warning(
                "%s uses basic auth without TLS: the password crosses the network in clear "
                "text; set metrics_tls_certfile/metrics_tls_keyfile",
                self._where,
            )
        add_source(listener.fileno(), self._accept)

    # --- connections ------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except _BLOCKED:
                return
            except OSError as error:
                # EMFILE & co. would leave the listener readable and spin the loop:
                # stop watching it for a while (see accept_backoff), once per episode.
                self.accept_backoff.failed(error, self._where)
                if self.accept_backoff.paused_for():
                    self._remove_source(self.listener.fileno())
                    self._paused = True
                return
            self.accept_backoff.succeeded(self._where)
            if len(self._clients) >= MAX_CLIENTS:
                connection.close()
                continue
            connection.setblocking(False)
            client = _Client(connection, SNIFF if self._tls is not None else REQUEST)
            fd = connection.fileno()
            self._clients[fd] = client
            self._add_source(fd, functools.partial(self._on_ready, fd))

    def _watch(self, fd: int, client: _Client, writable: bool) -> None:
        """Wait for `fd` to turn writable (or readable) next."""
        if client.writable != writable:
            client.writable = writable
            self._add_source(fd, functools.partial(self._on_ready, fd), writable=writable)

    def _on_ready(self, fd: int) -> None:
        client = self._clients.get(fd)
        if client is None:
            return
        try:
            if client.phase == SNIFF:
                self._sniff(fd, client)
            elif client.phase == HANDSHAKE:
                self._handshake(fd, client)
            elif client.phase == REQUEST:
                self._read(fd, client)
            else:
                self._write(fd, client)
        except OSError as error:  # includes ssl.SSLError: a failed handshake, a reset
            log.debug("%s: dropping a client (%s)", self._where, error)
            self._drop(fd)

    def _sniff(self, fd: int, client: _Client) -> None:
        """TLS endpoint: a TLS handshake starts with byte 0x16; answer anything else in plain."""
        assert self._tls is not None
        try:
            first = client.connection.recv(1, socket.MSG_PEEK)
        except _BLOCKED:
            return
        if not first:
            self._drop(fd)
            return
        if first != b"\x16":
            try:  # consume the plain request, so that closing sends a FIN, not a reset
                client.connection.recv(MAX_REQUEST)
            except _BLOCKED:
                pass
            host, port = self.address
            self._respond(
                fd, client, 400, f"this endpoint speaks HTTPS: use https://{host}:{port}/metrics\n"
            )
            return
        client.connection = self._tls.wrap_socket(
            client.connection, server_side=True, do_handshake_on_connect=False
        )
        client.phase = HANDSHAKE
        self._handshake(fd, client)

    def _handshake(self, fd: int, client: _Client) -> None:
        try:
            cast("ssl.SSLSocket", client.connection).do_handshake()
        except self._ssl_want_read:
            self._watch(fd, client, writable=False)
            return
        except self._ssl_want_write:
            self._watch(fd, client, writable=True)
            return
        client.phase = REQUEST
        self._watch(fd, client, writable=False)
        self._read(fd, client)  # the request may have come with the handshake's last flight

    def _read(self, fd: int, client: _Client) -> None:
        connection = client.connection
        while True:
            try:
                chunk = connection.recv(MAX_REQUEST)
            except _BLOCKED + self._ssl_want_read:
                self._watch(fd, client, writable=False)
                return
            except self._ssl_want_write:
                self._watch(fd, client, writable=True)
                return
            if not chunk:
                self._drop(fd)
                return
            client.received += chunk
            # TLS may hold decrypted bytes the fd will never signal again: take them now.
            pending = getattr(connection, "pending", None)
            if len(client.received) > MAX_REQUEST or not (pending and pending()):
                break
        self._evaluate(fd, client)

    def _evaluate(self, fd: int, client: _Client) -> None:
        """Answer the request in `client.received` once it is complete (or clearly bad)."""
        received = client.received
        line_end = received.find(b"\n")
        line = received if line_end < 0 else received[:line_end]
        if len(line) > MAX_REQUEST_LINE:
            self._respond(fd, client, 400, f"request line longer than {MAX_REQUEST_LINE} bytes\n")
            return
        if line_end < 0:
            return  # the request line is not complete yet
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            self._respond(
                fd, client, 400, "malformed request line: expected 'GET /metrics HTTP/1.1'\n"
            )
            return
        head_end = received.find(b"\r\n\r\n")
        if head_end < 0:
            head_end = received.find(b"\n\n")
        if head_end < 0:
            if len(received) >= MAX_REQUEST:
                self._respond(fd, client, 431, f"request head longer than {MAX_REQUEST} bytes\n")
            return
        headers = _headers(received[line_end + 1 : head_end])
        method, target = match.group(1).decode(), match.group(2).decode()
        if self._auth is not None and not self._auth.allows(headers.get("authorization")):
            self._respond(
                fd,
                client,
                401,
                "authentication required\n",
                extra_headers=(f'WWW-Authenticate: Basic realm="{REALM}"',),
            )
        elif method not in ("GET", "HEAD"):
            self._respond(
                fd, client, 405, "only GET is supported\n", extra_headers=("Allow: GET, HEAD",)
            )
        elif target.split("?")[0] == "/metrics":
            body, content_type = self.render(headers.get("accept", ""))
            self.scrapes += 1
            self._respond(
                fd, client, 200, b"" if method == "HEAD" else body, content_type=content_type
            )
        elif target == "/":
            self._respond(fd, client, 200, "sockherd: metrics at /metrics\n")
        else:
            self._respond(fd, client, 404, "not found: try /metrics\n")

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body (text format 0.0.4, whatever `accept` asks) and its type."""
        return render(f for c in self.collectors for f in c.collect()), CONTENT_TYPE

    def _respond(
        self,
        fd: int,
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
        self._watch(fd, client, writable=True)
        self._write(fd, client)

    def _write(self, fd: int, client: _Client) -> None:
        assert client.outgoing is not None
        try:
            sent = client.connection.send(client.outgoing)
        except _BLOCKED + self._ssl_want_write:
            self._watch(fd, client, writable=True)
            return
        except self._ssl_want_read:
            self._watch(fd, client, writable=False)
            return
        client.outgoing = client.outgoing[sent:]
        if not client.outgoing:
            self._drop(fd, finished=True)

    def _drop(self, fd: int, finished: bool = False) -> None:
        client = self._clients.pop(fd, None)
        if client is None:
            return
        self._remove_source(fd)
        if finished and client.phase == RESPONSE and hasattr(client.connection, "unwrap"):
            try:  # TLS: send close_notify (without waiting for the peer's)
                client.connection.unwrap()
            except (OSError, ValueError):
                pass
        client.connection.close()

    # --- housekeeping ---------------------------------------------------------------

    def expire_slow_clients(self) -> None:
        """Drop scrapers that have not finished within CLIENT_DEADLINE; watch the listener
        again once an accept back-off has run out.  Call once per loop iteration."""
        if self._paused and not self.accept_backoff.paused_for():
            self._paused = False
            self._add_source(self.listener.fileno(), self._accept)
        now = time.monotonic()
        for fd, client in list(self._clients.items()):
            if now > client.deadline:
                self._drop(fd)

    def close(self) -> None:
        """Close every connection and the listener."""
        for fd in list(self._clients):
            self._drop(fd)
        self._remove_source(self.listener.fileno())
        self.listener.close()

    def close_in_child(self) -> None:
        """In a forked child: close the inherited sockets without touching the loop."""
        for client in self._clients.values():
            client.connection.close()
        self.listener.close()


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
