"""A tiny HTTP service: GET / answers "hello from pid N"."""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler


class HelloHandler(BaseHTTPRequestHandler):
    """Answer every GET with a short text body naming the serving process."""

    def do_GET(self) -> None:
        """Reply 200 with "hello from pid N"."""
        body = f"hello from pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: the supervisor's metrics count requests."""
