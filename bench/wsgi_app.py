"""The WSGI twin of sockherd's `HelloHandler`, for gunicorn: same status, headers, body."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """Answer every request 200 with "hello from pid N"."""
    body = f"hello from pid {os.getpid()}\n".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
