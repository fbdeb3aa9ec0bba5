"""The live record of a worker: the request in hand, in its scoreboard slot.

Theory of operation
-------------------
Each scoreboard slot carries three fixed-size fields beside the counters:
`request_started` (monotonic seconds), `peer` (the client address, text) and
`description` (what the request is).  The worker writes them as it takes a request
(`begin()`: two stores, no allocation in the shared memory and no system call);
the supervisor reads them whenever it reports (`read()`), without asking the
worker anything, and computes the elapsed time itself.  A read racing a write
may see a torn text for that one read; `read()` decodes it with replacement
characters, never failing.

The description starts empty, which readers show as the peer.  Handlers set it:

* for `http.server`-style handlers (subclasses of `BaseHTTPRequestHandler`) the
  worker sets it to the request line as soon as it is parsed
  (`describe_http_requests()` wraps `parse_request()` once, in the worker);
* any handler may call `sockherd.describe_request("…")` (this module's
  `describe_request`), which truncates to `DESCRIPTION_BYTES` bytes of UTF-8
  without splitting a character.

Outside a prefork worker `describe_request` does nothing: in the supervisor, in
a plain, threading or forking server, and in any process a worker forks (the
record is dropped at fork).  In a worker serving requests on several threads the
slot holds one record: the last request begun or described.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

DESCRIPTION_BYTES = 160
PEER_BYTES = 64

_slot: Any = None  # this worker's scoreboard slot; None outside a prefork worker


def encode_truncated(text: str, limit: int) -> bytes:
    """`text` as UTF-8, cut to at most `limit` bytes on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:  # data[end] continues a character
        end -= 1
    return data[:end]


def format_peer(address: Any) -> str:
    """A client address as text: `host:port`, `[v6]:port`, a Unix path, or `-`."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    if isinstance(address, bytes):
        return address.decode("utf-8", "replace") or "-"
    return str(address) if address else "-"


def attach(slot: Any) -> None:
    """In a worker, once: make `slot` the record `begin()`/`describe_request()` write."""
    global _slot
    _slot = slot


def detach() -> None:
    """No record any more (a process forked by a worker, or the worker ending)."""
    global _slot
    _slot = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=detach)


def begin(slot: Any, client_address: Any, started: float) -> None:
    """The worker took a request from `client_address` at monotonic time `started`."""
    slot.request_started = started
    if type(client_address) is tuple and type(client_address[0]) is str:
        host, port = client_address[0], client_address[1]
        peer = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        slot.peer = peer.encode()[:PEER_BYTES]
    else:
        slot.peer = encode_truncated(format_peer(client_address), PEER_BYTES)
    slot.description = b""


def describe_request(description: str) -> None:
    """Describe the request this worker is serving (shown by `/status`, `ctl status`, the
    OOM and slow-request logs).  Truncated to 160 bytes of UTF-8.  A no-op outside a
    prefork worker; never raises for a `str`."""
    slot = _slot
    if slot is not None:
        slot.description = encode_truncated(description, DESCRIPTION_BYTES)


def read(slot: Any) -> tuple[str, str]:
    """(description, peer) of a slot, as text; the description falls back to the peer."""
    peer = bytes(slot.peer).rstrip(b"\0").decode("utf-8", "replace")
    description = bytes(slot.description).split(b"\0", 1)[0].decode("utf-8", "replace")
    return description or peer, peer


def describe_http_requests(server: Any) -> None:
    """In a worker: if the server's handler is an `http.server` handler, make it describe
    each request by its request line once parsed (one subclass, made once)."""
    http_server = sys.modules.get("http.server")
    handler = getattr(server, "RequestHandlerClass", None)
    bound = None
    if isinstance(handler, functools.partial):  # partial(SimpleHTTPRequestHandler, directory=…)
        bound, handler = handler, handler.func
    if http_server is None or not isinstance(handler, type):
        return
    if not issubclass(handler, http_server.BaseHTTPRequestHandler):
        return

    class Described(handler):  # type: ignore[misc, valid-type]
        def parse_request(self) -> bool:
            parsed = bool(super().parse_request())
            line = getattr(self, "requestline", "")
            if line:
                describe_request(line)
            return parsed

    Described.__name__ = handler.__name__
    Described.__qualname__ = handler.__qualname__
    Described.__module__ = handler.__module__
    if bound is not None:
        server.RequestHandlerClass = functools.partial(Described, *bound.args, **bound.keywords)
    else:
        server.RequestHandlerClass = Described
