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
import os
import socket
import sys
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
