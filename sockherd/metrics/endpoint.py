"""The /metrics endpoint, served from the supervisor's own serve loop (no thread, no fork).

A tiny non-blocking HTTP/1.0 server: its listening socket and every scrape
connection are wake sources of the serve loop, so a scrape never blocks the
loop, and a slow or malicious scraper costs one fd until `CLIENT_DEADLINE`.
At most `MAX_CLIENTS` scrapes are served at once; further connections are
closed at once.  Requests: `GET /metrics` (text format 0.0.4, see
`exposition`), `GET /` (a pointer to /metrics); anything else gets 404 or 405.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from .exposition import CONTENT_TYPE, render

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
MAX_CLIENTS = 16
CLIENT_DEADLINE = 10.0


class _Client:
    __slots__ = ("connection", "received", "outgoing", "deadline")

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.received = b""
        self.outgoing: memoryview | None = None
        self.deadline = time.monotonic() + CLIENT_DEADLINE


def build_collectors(server: Any) -> list[Any]:
    """What a scrape of `server` reads: its own collector (plus, later, user metrics)."""
    from .collector import ServerCollector

    return [ServerCollector(server)]


class MetricsEndpoint:
    """Serves the `collectors` over HTTP on `address`, driven by wake sources of a serve loop."""

    def __init__(
        self,
        address: tuple[str, int],
        collectors: list[Any],
        add_source: Callable[..., None],
        remove_source: Callable[[int], None],
    ) -> None:
        self.collectors = collectors
        self._add_source = add_source
        self._remove_source = remove_source
        self._clients: dict[int, _Client] = {}
        self.scrapes = 0
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(MAX_CLIENTS)
        except OSError as error:
            listener.close()
            from ..supervisor.socket_servers import _bind_error

            raise _bind_error(error, family, address) from error
        listener.setblocking(False)
        self.listener = listener
        self.address = listener.getsockname()[:2]
        add_source(listener.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("metrics endpoint: accept failed: %s", error)
                return
            if len(self._clients) >= MAX_CLIENTS:
                connection.close()
                continue
            connection.setblocking(False)
            client = _Client(connection)
            fd = connection.fileno()
            self._clients[fd] = client
            self._add_source(fd, functools.partial(self._on_ready, fd))

    def _on_ready(self, fd: int) -> None:
        client = self._clients.get(fd)
        if client is None:
            return
        try:
            if client.outgoing is None:
                self._read(fd, client)
            else:
                self._write(fd, client)
        except OSError:
            self._drop(fd)

    def _read(self, fd: int, client: _Client) -> None:
        try:
            chunk = client.connection.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            self._drop(fd)
            return
        client.received += chunk
        if b"\r\n\r\n" not in client.received and b"\n\n" not in client.received:
            if len(client.received) >= MAX_REQUEST:
                self._respond(fd, client, 431, "text/plain", b"request header too large\n")
            return
        head = client.received.split(b"\n", 1)[0].decode("latin-1").split()
        headers = client.received.decode("latin-1").lower()
        accept = ""
        for line in headers.splitlines():
            if line.startswith("accept:"):
                accept = line.split(":", 1)[1].strip()
        if len(head) < 2 or head[0] not in ("GET", "HEAD"):
            self._respond(fd, client, 405, "text/plain", b"only GET is supported\n")
        elif head[1].split("?")[0] == "/metrics":
            body, content_type = self.render(accept)
            self.scrapes += 1
            self._respond(fd, client, 200, content_type, b"" if head[0] == "HEAD" else body)
        elif head[1] == "/":
            self._respond(fd, client, 200, "text/plain", b"sockherd: metrics at /metrics\n")
        else:
            self._respond(fd, client, 404, "text/plain", b"not found: try /metrics\n")

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body (text format 0.0.4, whatever `accept` asks) and its type."""
        return render(f for c in self.collectors for f in c.collect()), CONTENT_TYPE

    def _respond(
        self, fd: int, client: _Client, status: int, content_type: str, body: bytes
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}
        head = (
            f"HTTP/1.0 {status} {reason.get(status, '')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        client.outgoing = memoryview(head + body)
        self._add_source(fd, functools.partial(self._on_ready, fd), writable=True)
        self._write(fd, client)

    def _write(self, fd: int, client: _Client) -> None:
        assert client.outgoing is not None
        try:
            sent = client.connection.send(client.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        client.outgoing = client.outgoing[sent:]
        if not client.outgoing:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        client = self._clients.pop(fd, None)
        if client is None:
            return
        self._remove_source(fd)
        client.connection.close()

    def expire_slow_clients(self) -> None:
        """Drop scrapers that have not finished within CLIENT_DEADLINE."""
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
