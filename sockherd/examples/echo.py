"""A line echo service: every line the client sends comes back unchanged."""

from __future__ import annotations

from sockherd.server.request_handlers import DatagramRequestHandler, StreamRequestHandler


class EchoHandler(StreamRequestHandler):
    """Echo each line until the client closes its side; lines are capped at 64 KiB."""

    max_line = 65536

    def handle(self) -> None:
        """Read a line, write it back, until EOF."""
        while True:
            line = self.rfile.readline(self.max_line + 1)
            if not line:
                return
            self.wfile.write(line)


class DatagramEchoHandler(DatagramRequestHandler):
    """Send each datagram back to its sender."""

    def handle(self) -> None:
        """Copy the datagram into the reply."""
        self.wfile.write(self.rfile.read())
