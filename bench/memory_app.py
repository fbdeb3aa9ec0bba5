"""The memory benchmark's application, the same for sockherd (`CacheHandler`) and gunicorn
(`application`).

At import it builds `FRAMEWORK_MB` of Python objects (module-level tables, standing in
for the framework, models and configuration a real application imports); then each
process builds its cache lazily, one `CACHE_CHUNKS`-th per request over its first
requests, about `CACHE_MB` of dicts, lists, tuples, ints and strings (not one bytes
blob: objects the garbage collector tracks and reference counts write to).  Every
request also reads a few cached entries and answers with its pid and how many chunks
its process has built.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler

FRAMEWORK_MB = int(os.environ.get("MEMORY_APP_FRAMEWORK_MB", "30"))
CACHE_MB = int(os.environ.get("MEMORY_APP_CACHE_MB", "100"))
CACHE_CHUNKS = 20
ENTRY_BYTES = 600  # measured: one entry below is about 600 bytes of objects on CPython 3.11


def _entries(prefix: str, megabytes: int) -> dict[str, list[object]]:
    count = megabytes * 2**20 // ENTRY_BYTES
    return {f"{prefix}-{i}": [i, f"value {i}", (i, -i), {"n": i}] for i in range(count)}


FRAMEWORK = _entries("framework", FRAMEWORK_MB)  # built at import: in the parent before fork
CACHE: list[dict[str, list[object]]] = []  # built lazily, in each worker


def touch_cache() -> str:
    """Build the next chunk of the cache if it is not complete; read a few entries."""
    if len(CACHE) < CACHE_CHUNKS:
        CACHE.append(_entries(f"cache{len(CACHE)}", CACHE_MB // CACHE_CHUNKS))
    index = random.randrange(len(CACHE))
    found = sum(len(CACHE[index][f"cache{index}-{random.randrange(1000)}"]) for _ in range(4))
    framework = len(FRAMEWORK[f"framework-{random.randrange(1000)}"])
    return f"pid {os.getpid()} chunks {len(CACHE)} read {found + framework}\n"


class CacheHandler(BaseHTTPRequestHandler):
    """sockherd's side: GET answers what `touch_cache()` says."""

    def do_GET(self) -> None:
        """Reply 200 with the serving process and its cache's state."""
        body = touch_cache().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""


def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """gunicorn's side: the same answer as a WSGI application."""
    body = touch_cache().encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
