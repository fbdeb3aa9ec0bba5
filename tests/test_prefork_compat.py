"""The foundation's socketserver behaviours, re-run against the prefork pool.

Every test of test_request_path, test_serve_loop, test_handlers, test_surface,
test_threading (and the socket-option and bind-error tests) that makes sense for
a pool is re-expressed here against `Prefork*Server`, over both hand-offs where
the hand-off changes the path a request takes:

* accept: the worker calls get_request -> verify_request -> finish_request
  (the handler: __init__, setup, handle, finish) -> shutdown_request -> close_request;
* dispatch: the supervisor calls get_request -> verify_request -> process_request
  (which passes the connection over SCM_RIGHTS) -> close_request (its copy), and the
  worker runs finish_request -> handler -> shutdown_request -> close_request, as
  ForkingMixIn splits them between parent and child.

Hooks run in forked workers, so they record themselves through a pipe made before
the fork (`Recorder`), each line tagged with the pid of the process that wrote it.

Left out on purpose: handle_request() timeouts (prefork servers raise RuntimeError),
connections queued when shutdown() is called (a stopping pool serves them, by design),
shutdown() from inside a handler (it runs in a worker, not in the serving thread), and
ThreadingMixIn's daemon_threads/_threads bookkeeping.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import socket
import socketserver as stock_socketserver
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import serving, tcp_request

import sockherd

LOOPBACK = ("127.0.0.1", 0)
HANDOFFS = ["accept", "dispatch"]
POLL = 0.05
LONG_POLL = 30.0  # a poll_interval no passing test ever waits out
FAST_HEARTBEAT = 0.05  # idle accept-mode workers notice a stop this fast
GRACEFUL = 2.0
DASHES = "-" * 40
NO_RCVTIMEO = bytes(16)  # struct timeval {0, 0}


# --- helpers -------------------------------------------------------------------------------


class Recorder:
    """Lines written by any process through a pipe created before the workers are forked.

    Each line is "<pid> <text>"; one os.write() per line, so lines from different
    processes never interleave (pipe writes under PIPE_BUF are atomic).
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._entries: list[tuple[int, str]] = []
        self._partial = b""

    def add(self, text: str) -> None:
        os.write(self.write_fd, f"{os.getpid()} {text}\n".encode())

    def entries(self) -> list[tuple[int, str]]:
        """Every (pid, text) recorded so far, in the order they reached the pipe."""
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
            pid, text = line.decode().split(" ", 1)
            self._entries.append((int(pid), text))
        return list(self._entries)

    def texts(self) -> list[str]:
        return [text for _pid, text in self.entries()]

    def supervisor(self) -> list[str]:
        """What this process (the supervisor, in its serving thread) recorded."""
        return [text for pid, text in self.entries() if pid == os.getpid()]

    def workers(self) -> dict[int, list[str]]:
        """What each other process (a worker) recorded, by pid, in order of first appearance."""
        result: dict[int, list[str]] = {}
        for pid, text in self.entries():
            if pid != os.getpid():
                result.setdefault(pid, []).append(text)
        return result

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture
def unix_paths() -> Iterator[list[str]]:
    """Short socket paths under /tmp (well under the 108-byte limit), unlinked afterwards."""
    paths = [f"/tmp/shpc-{os.getpid()}-{index}.sock" for index in range(2)]
    try:
        yield paths
    finally:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def prefork(cls: type, address: Any, handler: Any, handoff: str = "accept", **settings: Any) -> Any:
    """A prefork server with one worker and a short heartbeat unless told otherwise.

    graceful_timeout is short too, so that a worker failing to stop (see
    test_a_worker_stops_after_a_sigterm_that_arrived_while_its_handler_ran_python_code)
    costs the tests of other behaviours seconds, not the default 30.
    """
    settings.setdefault("workers", 1)
    settings.setdefault("heartbeat_interval", FAST_HEARTBEAT)
    settings.setdefault("graceful_timeout", GRACEFUL)
    return cls(address, handler, handoff=handoff, **settings)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def recording_handler(recorder: Recorder) -> type:
    """A handler that records __init__/setup/handle/finish, reads to EOF, then acts on it.

    The request names what to do: b"raise" raises ValueError, b"systemexit" and
    b"keyboardinterrupt" raise those BaseExceptions; anything else is echoed back
    as b"echo:" + request.
    """

    class Handler(sockherd.BaseRequestHandler):
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


def recording_server(
    cls: type, recorder: Recorder, handler: Any, handoff: str, **attributes: Any
) -> Any:
    """A prefork server whose request hooks record themselves, then call super().

    get_request is recorded once it has returned a connection: in accept mode a
    worker's accept() times out every heartbeat, which is not a request.
    """

    class RecordingServer(cls):  # type: ignore[valid-type, misc]
        def get_request(self) -> Any:
            result = super().get_request()
            recorder.add("get_request")
            return result

        def verify_request(self, request: Any, client_address: Any) -> bool:
            recorder.add("verify_request")
            return super().verify_request(request, client_address)

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
            recorder.add(f"handle_error:{sys.exc_info()[0].__name__}")
            super().handle_error(request, client_address)

    for name, value in attributes.items():
        setattr(RecordingServer, name, value)
    return prefork(RecordingServer, LOOPBACK, handler, handoff)


def worker_pids(server: Any) -> set[int]:
    return {worker["pid"] for worker in server.worker_stats()}


def children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


WORKER_SIDE = [
    "finish_request",
    "handler.__init__",
    "setup",
    "handle",
    "finish",
    "shutdown_request",
    "close_request",
]
WORKER_SIDE_WITH_ERROR = [
    "finish_request",
    "handler.__init__",
    "setup",
    "handle",
    "finish",
    "handle_error:ValueError",
    "shutdown_request",
    "close_request",
]
DISPATCHING_SUPERVISOR = ["get_request", "verify_request", "process_request", "close_request"]


# --- the class surface and construction (test_surface) -------------------------------------

PREFORK_CLASSES = [
    ("PreforkTCPServer", "TCPServer"),
    ("PreforkUDPServer", "UDPServer"),
    ("PreforkUnixStreamServer", "UnixStreamServer"),
    ("PreforkUnixDatagramServer", "UnixDatagramServer"),
]


def _signature(function: Any) -> inspect.Signature:
    signature = inspect.signature(function)
    return signature.replace(
        parameters=[
            parameter.replace(annotation=inspect.Parameter.empty)
            for parameter in signature.parameters.values()
        ],
        return_annotation=inspect.Signature.empty,
    )


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name in dir(cls)
        if not name.startswith("_")
        and callable(getattr(cls, name))
        and not isinstance(getattr(cls, name), type)
    }


@pytest.mark.parametrize(("name", "stock_name"), PREFORK_CLASSES)
def test_prefork_class_keeps_every_stock_method_with_its_stock_signature(name, stock_name):
    ours, theirs = getattr(sockherd, name), getattr(stock_socketserver, stock_name)
    methods = sorted(_public_methods(theirs)) + ["_handle_request_noblock", "__enter__"]
    for method in methods:
        assert (method, _signature(getattr(ours, method))) == (
            method,
            _signature(getattr(theirs, method)),
        )


@pytest.mark.parametrize(("name", "stock_name"), PREFORK_CLASSES)
def test_prefork_constructor_extends_the_stock_one_with_keyword_settings_only(name, stock_name):
    ours = list(_signature(getattr(sockherd, name).__init__).parameters.values())
    theirs = list(_signature(getattr(stock_socketserver, stock_name).__init__).parameters.values())
    assert ours[: len(theirs)] == theirs
    assert [parameter.kind for parameter in ours[len(theirs) :]] == [inspect.Parameter.VAR_KEYWORD]


@pytest.mark.parametrize(("name", "stock_name"), PREFORK_CLASSES)
def test_prefork_class_keeps_the_stock_attribute_defaults(name, stock_name):
    ours, theirs = getattr(sockherd, name), getattr(stock_socketserver, stock_name)
    for attribute in dir(theirs):
        value = getattr(theirs, attribute)
        if attribute.startswith("_") or callable(value) or attribute == "request_queue_size":
            continue  # request_queue_size is SOMAXCONN on purpose (test_surface)
        assert (attribute, getattr(ours, attribute)) == (attribute, value)
    assert ours.request_queue_size == getattr(socket, "SOMAXCONN", 5)


@pytest.mark.parametrize(("name", "stock_name"), PREFORK_CLASSES)
def test_prefork_class_is_its_socket_server_with_the_mixin_first(name, stock_name):
    cls = getattr(sockherd, name)
    assert issubclass(cls, getattr(sockherd, stock_name))
    assert cls.__mro__[1] is sockherd.PreforkMixIn
    if stock_name == "UnixDatagramServer":
        assert issubclass(cls, sockherd.UDPServer)
        assert not issubclass(cls, sockherd.UnixStreamServer)


def test_prefork_mixin_defines_no_init():
    assert "__init__" not in vars(sockherd.PreforkMixIn)


class ControlMixin:
    """test_logging's ControlMixin: its __init__ never calls super().__init__()."""

    def __init__(self, handler: Any, poll_interval: float) -> None:
        self._thread: threading.Thread | None = None
        self.poll_interval = poll_interval
        self._handler = handler
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, args=(self.poll_interval,), daemon=True
        )
        self._thread.start()

    def serve_forever(self, poll_interval: float) -> None:
        self.ready.set()
        super().serve_forever(poll_interval)  # type: ignore[misc]

    def stop(self) -> None:
        self.shutdown()  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.server_close()  # type: ignore[attr-defined]
        self.ready.clear()


def _control_server_class(base: type) -> type:
    stream = base.socket_type == socket.SOCK_STREAM

    class Delegating(sockherd.StreamRequestHandler if stream else sockherd.DatagramRequestHandler):
        def handle(self) -> None:
            self.server._handler(self)

    class ControlServer(ControlMixin, base):  # type: ignore[valid-type, misc]
        workers = 1  # settings as class attributes: this __init__ passes none
        heartbeat_interval = FAST_HEARTBEAT
        graceful_timeout = GRACEFUL

        def __init__(
            self, addr: Any, handler: Any, poll_interval: float = 0.5, bind_and_activate=True
        ) -> None:
            base.__init__(self, addr, Delegating, bind_and_activate)
            ControlMixin.__init__(self, handler, poll_interval)

        def server_bind(self) -> None:
            super().server_bind()
            self.port = self.socket.getsockname()[1]

    return ControlServer


def _upper_line(request: Any) -> None:
    request.wfile.write(request.rfile.readline().upper())


def test_control_mixin_calling_base_init_directly_serves_tcp_through_the_pool():
    server = _control_server_class(sockherd.PreforkTCPServer)(LOOPBACK, _upper_line, POLL)
    server.start()
    try:
        assert server.ready.wait(5)
        assert tcp_request(("127.0.0.1", server.port), b"ping\n") == b"PING\n"
    finally:
        server.stop()
    assert server.socket.fileno() == -1


def test_control_mixin_calling_base_init_directly_serves_udp_through_the_pool():
    server = _control_server_class(sockherd.PreforkUDPServer)(LOOPBACK, _upper_line, POLL)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"ping\n", ("127.0.0.1", server.port))
            assert client.recvfrom(100) == (b"PING\n", ("127.0.0.1", server.port))
    finally:
        server.stop()


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_user_composed_mixin_class_serves_through_the_pool(recorder, handoff):
    """class MyServer(PreforkMixIn, TCPServer), configured by class attributes."""
    cls = type(
        "MyServer",
        (sockherd.PreforkMixIn, sockherd.TCPServer),
        {
            "workers": 1,
            "handoff": handoff,
            "heartbeat_interval": FAST_HEARTBEAT,
            "graceful_timeout": GRACEFUL,
        },
    )
    server = cls(LOOPBACK, recording_handler(recorder))
    with serving(server, POLL):
        assert tcp_request(server.server_address) == b"echo:ping\n"
        pids = worker_pids(server)
    handled_by = {pid for pid, text in recorder.entries() if text == "handle"}
    assert handled_by == pids and os.getpid() not in pids


@pytest.mark.parametrize("composed", [False, True], ids=["PreforkTCPServer", "UserMixIn"])
def test_server_close_works_on_a_prefork_server_that_never_served(composed):
    """test_close_immediately: the handler class is a lambda and nothing was ever served."""
    cls = (
        type("MyServer", (sockherd.PreforkMixIn, sockherd.TCPServer), {})
        if composed
        else sockherd.PreforkTCPServer
    )
    server = cls(LOOPBACK, lambda *args: None)
    server.server_close()
    assert server.socket.fileno() == -1
    assert children() == set()


def test_prefork_server_binds_and_listens_when_asked_after_construction(recorder):
    server = prefork(
        sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder), bind_and_activate=False
    )
    try:
        assert server.socket.getsockname() == ("0.0.0.0", 0)
        server.allow_reuse_address = True  # read at bind time, per instance
        server.server_bind()
        server.server_activate()
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert server.server_address == server.socket.getsockname()
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except BaseException:
        server.server_close()
        raise
    with serving(server, POLL):
        assert tcp_request(server.server_address) == b"echo:ping\n"


def test_failed_bind_closes_the_socket_and_forks_nothing():
    """test_tcpserver_bind_leak (Issue #22435) for the prefork constructor, errors kept alive."""
    fds_before = len(os.listdir("/proc/self/fd"))
    errors = []
    for _ in range(64):
        with pytest.raises(OverflowError) as caught:
            sockherd.PreforkTCPServer(("127.0.0.1", -1), sockherd.StreamRequestHandler, workers=1)
        errors.append(caught.value)
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    assert children() == set()
    del errors


# --- addresses and socket options (test_socket_options, test_bind_errors) ------------------


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_port_0_becomes_the_bound_port_in_the_supervisor_and_the_workers(handoff):
    class Handler(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(repr(self.server.server_address).encode())

    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, Handler, handoff)
    assert server.server_address == server.socket.getsockname()
    assert server.server_address[1] != 0
    with serving(server, POLL):
        assert tcp_request(server.server_address, b"") == repr(server.server_address).encode()


def test_udp_port_0_becomes_the_bound_port():
    with prefork(sockherd.PreforkUDPServer, LOOPBACK, sockherd.DatagramRequestHandler) as server:
        assert server.server_address == server.socket.getsockname()
        assert server.server_address[1] != 0


def _reuse_options(sock: socket.socket) -> tuple[bool, bool]:
    reuse_port = (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        if hasattr(socket, "SO_REUSEPORT")
        else 0
    )
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)), bool(reuse_port)


@pytest.mark.parametrize("server_name", ["PreforkTCPServer", "PreforkUDPServer"])
@pytest.mark.parametrize(
    ("reuse_address", "reuse_port"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_reuse_attributes_set_the_socket_options(server_name, reuse_address, reuse_port):
    cls = type(
        "S",
        (getattr(sockherd, server_name),),
        {"allow_reuse_address": reuse_address, "allow_reuse_port": reuse_port},
    )
    with cls(LOOPBACK, sockherd.BaseRequestHandler, workers=1) as server:
        assert _reuse_options(server.socket) == (
            reuse_address,
            reuse_port and hasattr(socket, "SO_REUSEPORT"),
        )


def test_port_in_use_raises_bind_error_at_construction_and_forks_nothing():
    with sockherd.TCPServer(LOOPBACK, sockherd.BaseRequestHandler) as first:
        port = first.server_address[1]
        with pytest.raises(sockherd.BindError) as caught:
            sockherd.PreforkTCPServer(("127.0.0.1", port), sockherd.BaseRequestHandler, workers=2)
        assert children() == set()
    assert caught.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1 port {port}" in str(caught.value)
    assert "already in use" in str(caught.value)
