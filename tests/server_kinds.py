"""Server kinds: one behaviour, run against every way a request can be served.

A *kind* is a concurrency model and, for a pool, its hand-off.  Where the request
hooks run is what tells them apart:

  sync              TCPServer & co: the serving thread runs every hook and the handler.
  thread            ThreadingMixIn: the serving thread runs get_request, verify_request and
                    process_request; a new thread per request runs finish_request (the
                    handler) -> shutdown_request -> close_request.
  fork              ForkingMixIn: split as thread is, but a forked child runs the handler
                    side, and the serving thread also closes its copy (close_request).
  prefork-accept    PreforkMixIn, handoff="accept": a worker process runs every request
                    hook, from get_request on (without process_request); the supervisor
                    runs none.
  prefork-dispatch  PreforkMixIn, handoff="dispatch": split as fork is, the supervisor
                    passing the connection over SCM_RIGHTS to a worker.
  prefork-threads   PreforkMixIn, handoff="accept", threads=4: a worker's main thread runs
                    get_request and verify_request; one of its request threads runs
                    finish_request (the handler) -> shutdown_request -> close_request.

`stock-sync`, `stock-thread` and `stock-fork` are CPython's socketserver in those roles.
A differential test runs some of them too (`each_kind(stock=("sync",))`, the models whose
stock behaviour it pins down) and expects the same.

The `server_kind` fixture (conftest) runs a test over the five sockherd kinds;
`each_kind()` overrides that list for one test: adding stock kinds, and marking the
kinds a behaviour does not apply to as skipped, with the reason.

Hooks may run in another thread or process, so tests record through a `Recorder`: a
pipe made before any fork, each line tagged with the pid and thread that wrote it, so
a test can ask which *place* ran what: "loop" (the serving thread), "thread" (another
thread of the test process) or "child" (another process: a forked child, a worker).
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver as stock_socketserver
import sys
import threading
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import KINDS, serving, wait_until

import sockherd

POLL = 0.05  # small, so stock socketserver's shutdown() does not slow the suite down
FAST_HEARTBEAT = 0.05  # idle accept-mode workers notice a stop this fast
DEFAULT_HEARTBEAT = sockherd.PreforkMixIn.heartbeat_interval
# Short, so that a worker failing to stop costs the tests of other behaviours seconds.
GRACEFUL = 2.0
TRANSPORTS = ("TCP", "UDP", "UnixStream", "UnixDatagram")


@dataclass(frozen=True)
class ServerKind:
    """One kind: builds its servers and says where it runs what."""

    name: str
    model: str  # "sync", "thread", "fork" or "prefork"
    handoff: str | None = None
    stock: bool = False
    threads: int = 1  # prefork: each worker's request threads

    def __repr__(self) -> str:
        return f"<kind {self.name}>"

    @property
    def module(self) -> Any:
        """The module the kind's classes come from: sockherd, or CPython's socketserver."""
        return stock_socketserver if self.stock else sockherd

    @property
    def prefork(self) -> bool:
        return self.model == "prefork"

    @property
    def labels(self) -> set[str]:
        """The names `each_kind(skip=...)` matches: the kind's own, its model's, "stock"."""
        return {self.name, self.model} | ({"stock"} if self.stock else set())

    @property
    def mixin(self) -> type | None:
        """The mix-in that makes a socket server this kind (None for sync)."""
        name = {"thread": "ThreadingMixIn", "fork": "ForkingMixIn", "prefork": "PreforkMixIn"}
        return getattr(self.module, name[self.model]) if self.model in name else None

    @property
    def handler_place(self) -> str:
        """Where the handler runs: "loop", "thread" or "child"."""
        return {"sync": "loop", "thread": "thread"}.get(self.model, "child")

    def server_class(self, transport: str = "TCP") -> type:
        """The kind's predefined class for `transport` ("TCP", "UDP", "UnixStream",
        "UnixDatagram"); CPython 3.11 lacks the Forking Unix ones, composed here as 3.12 does."""
        assert transport in TRANSPORTS, transport
        base_name = f"{transport}Server"
        prefix = {"sync": "", "thread": "Threading", "fork": "Forking", "prefork": "Prefork"}
        name = prefix[self.model] + base_name
        if hasattr(self.module, name):
            return getattr(self.module, name)  # type: ignore[no-any-return]
        return type(name, (self.mixin, getattr(self.module, base_name)), {})

    def class_settings(self) -> dict[str, Any]:
        """Pool settings as class attributes (for classes whose __init__ passes none)."""
        if not self.prefork:
            return {}
        return {
            "workers": 1,
            "handoff": self.handoff,
            "heartbeat_interval": FAST_HEARTBEAT,
            "graceful_timeout": GRACEFUL,
        } | ({"threads": self.threads} if self.threads > 1 else {})

    def server(
        self,
        address: Any,
        handler: Any,
        *,
        cls: type | None = None,
        transport: str = "TCP",
        bind_and_activate: bool = True,
        **pool_settings: Any,
    ) -> Any:
        """A server of this kind (`cls`, a subclass of `server_class(transport)`, if given).

        `pool_settings` apply to the prefork kinds only, over one worker, a fast heartbeat
        and a short graceful_timeout."""
        cls = cls or self.server_class(transport)
        if not self.prefork:
            return cls(address, handler, bind_and_activate)
        settings = self.class_settings() | pool_settings
        return cls(address, handler, bind_and_activate, **settings)

    def wait_ready(self, server: Any) -> None:
        """Wait until `server` (serving) can take a request: a pool's workers are all idle.

        In accept mode that also means the listener has its heartbeat timeout, as it has
        for any client of a running pool."""
        if not self.prefork:
            return

        def ready() -> bool:
            snapshot = server.pool_snapshot()
            return bool(
                snapshot
                and len(snapshot.workers) == snapshot.desired
                and all(worker.state == "idle" for worker in snapshot.workers)
            )

        wait_until(ready)

    @contextlib.contextmanager
    def serving(self, server: Any, poll_interval: float = POLL) -> Iterator[threading.Thread]:
        """conftest.serving(), once the server is ready (see `wait_ready`)."""
        with serving(server, poll_interval) as thread:
            self.wait_ready(server)
            yield thread

    def worker_pids(self, server: Any) -> set[int]:
        """The pids of a serving pool's workers (empty for the other kinds)."""
        return {worker["pid"] for worker in server.worker_stats()} if self.prefork else set()

    def request_counts(self, server: Any) -> tuple[int, int]:
        """(requests finished, of which errors) as sockherd counts them for this kind:
        `request_stats` in the serving process, a pool's scoreboard through worker_stats()."""
        assert not self.stock, "CPython's socketserver counts nothing"
        if self.prefork:
            stats = server.worker_stats()
            return sum(w["requests"] for w in stats), sum(w["errors"] for w in stats)
        by_outcome = server.request_stats.by_outcome
        return sum(by_outcome.values()), by_outcome["error"]

    def stopping(self, server: Any) -> bool:
        """Whether a stop (shutdown(), then server_close()) is under way: a pool's supervisor
        is draining; another kind's server_close() has closed the listening socket."""
        if self.prefork:
            from sockherd.supervisor.arbiter import supervising

            arbiter = supervising(server)
            return arbiter is not None and arbiter.snapshot().state == "draining"
        return server.socket.fileno() == -1


KIND = {
    kind.name: kind
    for kind in [
        ServerKind("sync", "sync"),
        ServerKind("thread", "thread"),
        ServerKind("fork", "fork"),
        ServerKind("prefork-accept", "prefork", "accept"),
        ServerKind("prefork-dispatch", "prefork", "dispatch"),
        ServerKind("prefork-threads", "prefork", "accept", threads=4),
        ServerKind("stock-sync", "sync", stock=True),
        ServerKind("stock-thread", "thread", stock=True),
        ServerKind("stock-fork", "fork", stock=True),
    ]
}


def each_kind(
    *, stock: Collection[str] = (), skip: Mapping[str, str] | None = None
) -> pytest.MarkDecorator:
    """Run the test over every sockherd kind, and over CPython's kinds of the models named in
    `stock` ("sync", "thread", "fork"): the differential reference, expected to pass alike.

    `skip` maps a label (a kind's name, its model such as "sync" or "prefork", or
    "stock") to the reason the behaviour does not apply to the kinds it names; those
    kinds are reported as skipped with that reason.
    """
    names = KINDS + [f"stock-{model}" for model in stock]
    params = []
    for name in names:
        reason = next((why for key, why in (skip or {}).items() if key in KIND[name].labels), None)
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return pytest.mark.parametrize("server_kind", params, indirect=True)


# --- recording what runs where ----------------------------------------------------------


class Recorder:
    """Lines written by any thread or process through a pipe made before anything forks.

    Each line is "<pid> <thread ident> <text>", written in one os.write(), so lines from
    different processes never interleave (pipe writes under PIPE_BUF are atomic).
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._entries: list[tuple[int, int, str]] = []
        self._partial = b""

    def add(self, text: str) -> None:
        os.write(self.write_fd, f"{os.getpid()} {threading.get_ident()} {text}\n".encode())

    def entries(self) -> list[tuple[int, int, str]]:
        """Every (pid, thread ident, text) recorded so far, in the order they reached the pipe."""
        for _ in range(1000):  # bounded: the pipe holds at most 64 KiB
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._partial += chunk
        *complete, self._partial = self._partial.split(b"\n")
        for line in complete:
            pid, ident, text = line.decode().split(" ", 2)
            self._entries.append((int(pid), int(ident), text))
        return list(self._entries)

    def texts(self) -> list[str]:
        return [text for _pid, _ident, text in self.entries()]

    def place(self, pid: int, ident: int, loop: threading.Thread) -> str:
        """Where (pid, ident) is, seen from the test process: "loop", "thread" or "child"."""
        if pid != os.getpid():
            return "child"
        return "loop" if ident == loop.ident else "thread"

    def by_place(self, loop: threading.Thread) -> dict[str, list[str]]:
        """What each place recorded; `loop` is the thread serve_forever() ran in.

        A place's list is what each thread or process in it recorded, in order, one after
        the other in the order they began: two request threads (or children) may overlap
        in time, one closing its request while the next begins, but each runs its own part
        of the path in order."""
        by_actor: dict[tuple[int, int], list[str]] = {}
        for pid, ident, text in self.entries():
            by_actor.setdefault((pid, ident), []).append(text)
        result: dict[str, list[str]] = {}
        for (pid, ident), texts in by_actor.items():
            result.setdefault(self.place(pid, ident, loop), []).extend(texts)
        return result

    def where(self, text: str, loop: threading.Thread) -> set[str]:
        """The places that recorded `text`."""
        return {self.place(p, i, loop) for p, i, t in self.entries() if t == text}

    def pids(self, text: str) -> set[int]:
        """The pids of the processes that recorded `text`."""
        return {pid for pid, _ident, recorded in self.entries() if recorded == text}

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def recv_all(sock: Any) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def recording_handler(kind: ServerKind, recorder: Recorder) -> type:
    """A handler that records __init__/setup/handle/finish, reads to EOF, then acts on it.

    The request names what to do: b"raise" raises ValueError, b"systemexit" and
    b"keyboardinterrupt" raise those BaseExceptions; anything else is echoed back
    as b"echo:" + request.
    """

    class Handler(kind.module.BaseRequestHandler):  # type: ignore[name-defined, misc]
        def __init__(self, request: Any, client_address: Any, server: Any) -> None:
            recorder.add("handler.__init__")
            super().__init__(request, client_address, server)

        def setup(self) -> None:
            recorder.add("setup")

        def handle(self) -> None:
            recorder.add("handle")
            data = recv_all(self.request)
            if data == b"raise":
                raise ValueError("boom from the handler")
            if data == b"systemexit":
                raise SystemExit(3)
            if data == b"keyboardinterrupt":
                raise KeyboardInterrupt
            self.request.sendall(b"echo:" + data)

        def finish(self) -> None:
            recorder.add("finish")

    return Handler


def recording_server_class(
    kind: ServerKind, recorder: Recorder, *, service_actions: bool = False, **attributes: Any
) -> type:
    """A subclass of the kind's TCP class whose request hooks record themselves, then call
    super(); `attributes` are set on the class (e.g. a verify_request override).

    get_request is recorded once it has returned a connection: in accept mode a worker's
    accept() times out every heartbeat, which is not a request.  service_actions is
    recorded only when asked, as it runs every poll_interval.
    """

    class RecordingServer(kind.server_class()):  # type: ignore[misc]
        def get_request(self) -> Any:
            result = super().get_request()
            recorder.add("get_request")
            return result

        def verify_request(self, request: Any, client_address: Any) -> bool:
            recorder.add("verify_request")
            return super().verify_request(request, client_address)  # type: ignore[no-any-return]

        def process_request(self, request: Any, client_address: Any) -> None:
            recorder.add("process_request")
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            recorder.add("finish_request")
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            recorder.add("shutdown_request")
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            recorder.add("close_request")
            super().close_request(request)

        def handle_error(self, request: Any, client_address: Any) -> None:
            recorder.add(f"handle_error:{sys.exc_info()[0].__name__}")  # type: ignore[union-attr]
            super().handle_error(request, client_address)

    def recorded_service_actions(self: Any) -> None:
        recorder.add("service_actions")
        super(RecordingServer, self).service_actions()

    if service_actions:
        RecordingServer.service_actions = recorded_service_actions  # type: ignore[method-assign]
    for name, value in attributes.items():
        setattr(RecordingServer, name, value)
    return RecordingServer


def recording_server(kind: ServerKind, recorder: Recorder, **options: Any) -> Any:
    """A server of `kind` on loopback with recording hooks and the recording handler."""
    cls = recording_server_class(kind, recorder, **options)
    return kind.server(("127.0.0.1", 0), recording_handler(kind, recorder), cls=cls)


class WrappedConnection:
    """What an SSL-wrapping get_request() returns: not a socket.socket, delegating to one."""

    def __init__(self, connection: socket.socket, recorder: Recorder) -> None:
        self._connection = connection
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def close(self) -> None:
        self._recorder.add("wrapper closed")
        self._connection.close()


REQUEST_SIDE = ["finish_request", "handler.__init__", "setup", "handle", "finish"]
CLOSE = ["shutdown_request", "close_request"]


def request_path(kind: ServerKind, handler_side: list[str]) -> dict[str, list[str]]:
    """The hooks each place runs for one request, CPython's order split as `kind` splits it.

    `handler_side` is what runs from finish_request to close_request (the handler's
    hooks, handle_error if it raised, shutdown_request, close_request)."""
    accepted = ["get_request", "verify_request"]
    if kind.model == "sync":
        return {"loop": [*accepted, "process_request", *handler_side]}
    if kind.model == "thread":
        return {"loop": [*accepted, "process_request"], "thread": handler_side}
    if kind.handoff == "accept":
        return {"child": [*accepted, *handler_side]}
    return {"loop": [*accepted, "process_request", "close_request"], "child": handler_side}


def requests_path(kind: ServerKind, *handler_sides: list[str]) -> dict[str, list[str]]:
    """The hooks each place runs for requests made one after the other, one `handler_side`
    each (see `request_path`).

    A threaded worker's main thread takes every request before a request thread runs
    each one's handler side: `Recorder.by_place` lists the main thread's hooks first."""
    paths = [request_path(kind, side) for side in handler_sides]
    if kind.threads > 1:
        taken = [hook for path in paths for hook in path["child"][:2]]
        return {"child": taken + [hook for side in handler_sides for hook in side]}
    return {place: [hook for path in paths for hook in path[place]] for place in paths[0]}
