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

import array
import ast
import contextlib
import errno
import inspect
import io
import logging
import mmap
import os
import select
import signal
import socket
import socketserver as stock_socketserver
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import serving, tcp_request, wait_until, zombie_children

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


# --- the path of one request (test_request_path) -------------------------------------------


def test_accept_mode_worker_runs_every_request_hook_in_stock_order(recorder):
    server = recording_server(
        sockherd.PreforkTCPServer, recorder, recording_handler(recorder), "accept"
    )
    with serving(server, POLL):
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: "close_request" in recorder.texts())
        pids = worker_pids(server)
    workers = recorder.workers()
    assert recorder.supervisor() == []
    assert list(workers) == list(pids)
    assert list(workers.values()) == [["get_request", "verify_request", *WORKER_SIDE]]


def test_dispatch_mode_splits_the_hooks_between_supervisor_and_worker(recorder):
    server = recording_server(
        sockherd.PreforkTCPServer, recorder, recording_handler(recorder), "dispatch"
    )
    with serving(server, POLL):
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: recorder.texts().count("close_request") == 2)
        pids = worker_pids(server)
    workers = recorder.workers()
    assert recorder.supervisor() == DISPATCHING_SUPERVISOR
    assert list(workers) == list(pids)
    assert list(workers.values()) == [WORKER_SIDE]
    texts = recorder.texts()
    assert texts.index("process_request") < texts.index("finish_request")


def test_dispatch_supervisor_calls_service_actions_after_its_request_hooks(recorder):
    class Server(sockherd.PreforkTCPServer):
        def service_actions(self) -> None:
            recorder.add("service_actions")
            super().service_actions()

    server = recording_server(Server, recorder, recording_handler(recorder), "dispatch")
    with serving(server, POLL):
        assert tcp_request(server.server_address) == b"echo:ping\n"

        def after_request() -> bool:
            names = recorder.supervisor()
            return (
                "get_request" in names and "service_actions" in names[names.index("get_request") :]
            )

        wait_until(after_request)
    names = recorder.supervisor()
    start = names.index("get_request")
    assert names[start : start + 5] == DISPATCHING_SUPERVISOR + ["service_actions"]


def worker_finished(recorder: Recorder, count: int = 1) -> bool:
    """True once `count` workers have each recorded a close_request."""
    names = recorder.workers().values()
    return sum("close_request" in texts for texts in names) >= count


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_handler_exception_calls_handle_error_then_shutdown_request_in_the_worker(
    recorder, handoff, capfd
):
    server = recording_server(
        sockherd.PreforkTCPServer, recorder, recording_handler(recorder), handoff
    )
    with serving(server, POLL):
        assert tcp_request(server.server_address, b"raise") == b""
        wait_until(lambda: worker_finished(recorder))
    workers = list(recorder.workers().values())
    if handoff == "accept":
        assert recorder.supervisor() == []
        assert workers == [["get_request", "verify_request", *WORKER_SIDE_WITH_ERROR]]
    else:
        assert recorder.supervisor() == DISPATCHING_SUPERVISOR
        assert workers == [WORKER_SIDE_WITH_ERROR]
    assert "ValueError: boom from the handler" in capfd.readouterr().err


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_handler_exception_is_counted_as_an_error_and_the_pool_keeps_serving(
    recorder, handoff, capfd
):
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder), handoff)
    with serving(server, POLL) as thread:
        assert tcp_request(server.server_address, b"raise") == b""
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: server.worker_stats()[0]["requests"] == 2)
        stats = server.worker_stats()
        assert thread.is_alive()
    assert [(worker["requests"], worker["errors"]) for worker in stats] == [(2, 1)]
    assert "ValueError: boom from the handler" in capfd.readouterr().err


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_verify_request_false_only_shuts_down_the_request(recorder, handoff):
    def refuse(self: Any, request: Any, client_address: Any) -> bool:
        recorder.add("verify_request")
        return False

    server = recording_server(
        sockherd.PreforkTCPServer,
        recorder,
        recording_handler(recorder),
        handoff,
        verify_request=refuse,
    )
    refused = ["get_request", "verify_request", "shutdown_request", "close_request"]
    with serving(server, POLL):
        assert tcp_request(server.server_address, b"") == b""
        wait_until(lambda: "close_request" in recorder.texts())
        served = sum(worker["requests"] for worker in server.worker_stats())
    if handoff == "accept":
        assert recorder.supervisor() == []
        assert list(recorder.workers().values()) == [refused]
    else:
        assert recorder.supervisor() == refused
        assert recorder.workers() == {}
    assert served == 0


@pytest.mark.parametrize("payload", [b"systemexit", b"keyboardinterrupt"])
@pytest.mark.parametrize("handoff", HANDOFFS)
def test_base_exception_in_a_handler_shuts_down_the_request_and_the_worker_is_replaced(
    recorder, handoff, payload, capfd
):
    """As in a forked child: shutdown_request (no handle_error), then the BaseException ends
    the worker; the pool replaces it and the next request is served."""
    server = recording_server(
        sockherd.PreforkTCPServer, recorder, recording_handler(recorder), handoff
    )
    with serving(server, POLL):
        first_worker = wait_until(lambda: worker_pids(server))
        assert tcp_request(server.server_address, payload) == b""
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: worker_finished(recorder, 2))
    (died_in, died), (replaced_by, replacement) = recorder.workers().items()
    assert died_in in first_worker and replaced_by not in first_worker
    accepted = ["get_request", "verify_request"] if handoff == "accept" else []
    assert died == replacement == [*accepted, *WORKER_SIDE]
    assert not any(text.startswith("handle_error") for text in recorder.texts())
    assert "Exception occurred during processing" not in capfd.readouterr().err
    assert zombie_children() == []


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_oserror_from_get_request_is_dropped_silently(recorder, handoff, capfd, caplog):
    """ECONNABORTED from get_request() (in the worker, or the dispatching supervisor): no other
    hook runs for it, nothing is printed or logged, and the next connection is served."""

    class AbortingServer(sockherd.PreforkTCPServer):
        aborted = False  # per process: the one worker (accept) or the supervisor (dispatch)

        def get_request(self) -> Any:
            connection, address = self.socket.accept()
            if not self.aborted:
                self.aborted = True
                connection.close()
                recorder.add("get_request aborted")
                raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")
            recorder.add("get_request")
            return connection, address

    server = prefork(AbortingServer, LOOPBACK, recording_handler(recorder), handoff)
    with serving(server, POLL):
        first_worker = wait_until(lambda: worker_pids(server))
        assert tcp_request(server.server_address, b"") == b""
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: "finish" in recorder.texts())
        assert worker_pids(server) == first_worker
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert recorder.texts() == [
        "get_request aborted",
        "get_request",
        "handler.__init__",
        "setup",
        "handle",
        "finish",
    ]
    assert capfd.readouterr() == ("", "")
    assert logged == []


def client_and_error_output(handoff: str, recorder: Recorder, capfd: Any) -> tuple[list, Any]:
    """Serve one raising request; return the stderr lines and the client's address."""
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder), handoff)
    capfd.readouterr()
    with serving(server, POLL):
        with socket.create_connection(server.server_address, timeout=5) as client:
            client_address = client.getsockname()
            client.sendall(b"raise")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b""
        wait_until(lambda: server.worker_stats()[0]["errors"] == 1)
    captured = capfd.readouterr()
    assert captured.out == ""
    return captured.err.splitlines(), client_address


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_handle_error_default_stderr_format_from_a_worker(recorder, handoff, capfd):
    lines, client_address = client_and_error_output(handoff, recorder, capfd)
    assert lines[0] == DASHES
    assert lines[1] == f"Exception occurred during processing of request from {client_address}"
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-2] == "ValueError: boom from the handler"
    assert lines[-1] == DASHES
    assert any(line.strip() == 'raise ValueError("boom from the handler")' for line in lines)
    assert lines.count(DASHES) == 2


def _raising_handle(self: Any) -> None:
    recv_all(self.request)
    raise ValueError("boom from the handler")


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_handle_error_output_matches_stock_from_the_handler_frame_on(recorder, handoff, capfd):
    """Stock's synchronous TCPServer and a prefork worker print the same banner and the same
    traceback from the handler's frame on."""

    def normalised(lines: list[str], client_address: Any) -> tuple[list[str], list[str]]:
        lines = [line.replace(str(client_address), "CLIENT") for line in lines]
        frame = next(i for i, line in enumerate(lines) if line.endswith(", in _raising_handle"))
        return lines[:3], lines[frame:]

    handler = type("Handler", (sockherd.BaseRequestHandler,), {"handle": _raising_handle})
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, handler, handoff)
    with serving(server, POLL):
        capfd.readouterr()
        with socket.create_connection(server.server_address, timeout=5) as client:
            ours_address = client.getsockname()
            client.shutdown(socket.SHUT_WR)
            recv_all(client)
        wait_until(lambda: server.worker_stats()[0]["errors"] == 1)
    ours = normalised(capfd.readouterr().err.splitlines(), ours_address)

    stock_handler = type("Handler", (stock_socketserver.BaseRequestHandler,), {})
    stock_handler.handle = _raising_handle
    with stock_socketserver.TCPServer(LOOPBACK, stock_handler) as stock_server:
        with socket.create_connection(stock_server.server_address, timeout=5) as client:
            stock_address = client.getsockname()
            client.shutdown(socket.SHUT_WR)
            stock_server.handle_request()
    theirs = normalised(capfd.readouterr().err.splitlines(), stock_address)
    assert ours == theirs


def test_context_manager_returns_the_server_and_closes_the_socket_after_the_pool_stopped():
    with prefork(sockherd.PreforkTCPServer, LOOPBACK, sockherd.StreamRequestHandler) as server:
        loop = threading.Thread(target=server.serve_forever, args=(POLL,), name="serve_forever")
        loop.start()
        try:
            wait_until(lambda: worker_pids(server))
            assert tcp_request(server.server_address) == b""
        finally:
            server.shutdown()
            loop.join(10)
        assert server.socket.fileno() != -1
    assert server.socket.fileno() == -1
    assert children() == set()


def test_context_manager_does_not_suppress_exceptions():
    class Marker(Exception):
        pass

    with pytest.raises(Marker):
        with prefork(sockherd.PreforkTCPServer, LOOPBACK, sockherd.BaseRequestHandler) as server:
            raise Marker
    assert server.socket.fileno() == -1
    assert server.__exit__(None, None, None) is None


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_server_close_twice_is_harmless_after_serving(recorder, handoff):
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder), handoff)
    with serving(server, POLL):  # closes the server on exit
        assert tcp_request(server.server_address) == b"echo:ping\n"
    assert server.socket.fileno() == -1
    server.server_close()
    server.server_close()
    assert server.socket.fileno() == -1


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


def wrapping_server(recorder: Recorder, handler: type, handoff: str, **settings: Any) -> Any:
    class WrappingServer(sockherd.PreforkTCPServer):
        def get_request(self) -> Any:
            connection, address = super().get_request()
            return WrappedConnection(connection, recorder), address

    return prefork(WrappingServer, LOOPBACK, handler, handoff, **settings)


def test_get_request_override_connection_reaches_the_handler_and_is_closed_by_the_worker(
    recorder,
):
    """Accept mode: the path goes through self.get_request() in the worker, so the wrapped
    connection (as SSL-wrapping servers return) reaches the handler and is the object the
    worker shuts down and closes."""

    class Handler(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            while self.request.recv(65536):
                pass
            self.request.sendall(type(self.request).__name__.encode())

    server = wrapping_server(recorder, Handler, "accept")
    with serving(server, POLL):
        reply = tcp_request(server.server_address)
        wait_until(lambda: "wrapper closed" in recorder.texts())
        workers = worker_pids(server)
    assert reply == b"WrappedConnection"
    closed_in = {pid for pid, text in recorder.entries() if text == "wrapper closed"}
    assert closed_in and closed_in <= workers


def test_dispatch_refuses_a_wrapped_connection_with_an_actionable_error(recorder, caplog):
    """Dispatch mode can pass only a socket's fd, not the object get_request() wrapped it in
    (a worker would read TLS records as plain bytes): the supervisor refuses the connection,
    closes it without running the handler, and says to use handoff='accept'."""

    class Handler(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            recorder.add("handle")

    server = wrapping_server(recorder, Handler, "dispatch")
    with serving(server, POLL):
        assert tcp_request(server.server_address) == b""
        wait_until(lambda: "wrapper closed" in recorder.texts())
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "handoff='accept'" in errors[0]
    assert recorder.texts() == ["wrapper closed"]
    assert recorder.supervisor() == ["wrapper closed"]


def test_connection_from_a_wrapping_get_request_has_no_receive_timeout(recorder):
    """The listener's heartbeat receive timeout (SO_RCVTIMEO, accept mode) must not reach the
    handler's connection, also when get_request() wraps it: a client slower than
    heartbeat_interval would otherwise make the handler's recv() fail with EAGAIN."""

    class Handler(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            rcvtimeo = self.request.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
            self.request.sendall(rcvtimeo)

    server = wrapping_server(recorder, Handler, "accept")
    with serving(server, POLL):
        # Connect once the listener has its heartbeat timeout, as any client of a running
        # pool does (earlier connections were cloned from the listener before it was set).
        wait_until(lambda: worker_pids(server))
        reply = tcp_request(server.server_address, b"")
    assert reply == NO_RCVTIMEO


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_get_request_override_client_address_reaches_the_handler(handoff):
    class TaggingServer(sockherd.PreforkTCPServer):
        def get_request(self) -> Any:
            connection, address = super().get_request()
            return connection, ("tagged", *address)

    class Handler(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(repr(self.client_address).encode())

    server = prefork(TaggingServer, LOOPBACK, Handler, handoff)
    with serving(server, POLL):
        with socket.create_connection(server.server_address, timeout=5) as client:
            expected = ("tagged", *client.getsockname())
            client.shutdown(socket.SHUT_WR)
            reply = recv_all(client)
    assert reply == repr(expected).encode()


# --- the serve loop (test_serve_loop) -------------------------------------------------------


def call_with_deadline(function: Any, rescue: Any, timeout: float = 10.0) -> float:
    """Run `function` in a thread and return how long it took; if it hangs, `rescue` it,
    join it and fail the test, so a regression costs seconds, not forever."""
    thread = threading.Thread(target=function, name="call_with_deadline", daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(timeout)
    elapsed = time.monotonic() - start
    if thread.is_alive():
        rescue()
        thread.join(timeout)
        pytest.fail(f"{function} did not return within {timeout} s")
    return elapsed


def test_service_actions_override_runs_periodically_in_the_supervisor(recorder):
    """An override that calls super() is called at least once per poll_interval while idle,
    in the supervisor's serving thread, and the pool it drives still serves."""
    calls: list[tuple[float, int, threading.Thread]] = []

    class Server(sockherd.PreforkTCPServer):
        def service_actions(self) -> None:
            calls.append((time.monotonic(), os.getpid(), threading.current_thread()))
            super().service_actions()

    server = prefork(Server, LOOPBACK, recording_handler(recorder))
    with serving(server, POLL) as thread:
        wait_until(lambda: len(calls) >= 6)
        assert tcp_request(server.server_address) == b"echo:ping\n"
    times = [when for when, _pid, _thread in calls[:6]]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert max(gaps) < POLL + 0.5
    assert {(pid, caller) for _when, pid, caller in calls} == {(os.getpid(), thread)}


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_shutdown_called_before_serve_forever_makes_it_return_at_once_leaving_no_worker(handoff):
    """certbot's pattern: shutdown() from a thread before serve_forever() starts.  With the
    default heartbeat, serve_forever() returns well within poll_interval, and no worker is
    left running (nor unreaped) when it does."""
    server = sockherd.PreforkTCPServer(
        LOOPBACK,
        sockherd.StreamRequestHandler,
        workers=2,
        handoff=handoff,
    )
    try:
        stopper = threading.Thread(target=server.shutdown, name="early-shutdown")
        stopper.start()
        wait_until(lambda: server._BaseServer__shutdown_request)
        left_behind: list[set[int]] = []

        def serve() -> None:
            server.serve_forever(LONG_POLL)
            left_behind.append(children())

        elapsed = call_with_deadline(serve, rescue=server.shutdown)
        stopper.join(5)
        assert not stopper.is_alive()
        assert elapsed < 2.0
        assert left_behind == [set()]
    finally:
        server.server_close()


def test_serve_forever_after_an_early_shutdown_runs_normally(recorder):
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder))
    stopper = threading.Thread(target=server.shutdown, name="early-shutdown")
    stopper.start()
    wait_until(lambda: server._BaseServer__shutdown_request)
    call_with_deadline(lambda: server.serve_forever(POLL), rescue=server.shutdown)
    stopper.join(5)
    with serving(server, POLL) as thread:
        assert tcp_request(server.server_address) == b"echo:ping\n"
        assert thread.is_alive()


def stop_loop(server: Any) -> None:
    """Run serve_forever() in a thread until its workers are up, then shut it down."""
    thread = threading.Thread(target=server.serve_forever, args=(POLL,), name="serve_forever")
    thread.start()
    wait_until(lambda: worker_pids(server))
    server.shutdown()
    thread.join(5)
    assert not thread.is_alive()


def test_shutdown_after_the_loop_ended_returns_at_once(recorder):
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder))
    try:
        stop_loop(server)
        elapsed = call_with_deadline(server.shutdown, rescue=server.serve_forever)
        assert elapsed < 1.0
    finally:
        server.server_close()


def test_serve_forever_after_a_late_shutdown_returns_at_once_leaving_no_worker(recorder):
    """A shutdown() after the loop ended leaves the flag set: the next serve_forever()
    returns at once and leaves no worker behind."""
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder))
    try:
        stop_loop(server)
        server.shutdown()
        left_behind: list[set[int]] = []

        def serve() -> None:
            server.serve_forever(LONG_POLL)
            left_behind.append(children())

        elapsed = call_with_deadline(serve, rescue=server.shutdown)
    finally:
        server.server_close()
    assert elapsed < 2.0
    assert left_behind == [set()]


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_shutdown_before_serve_forever_reports_no_worker_failure(handoff, caplog):
    """Workers that the early shutdown stops are stopped workers, not failed ones."""
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, sockherd.StreamRequestHandler, handoff)
    try:
        stopper = threading.Thread(target=server.shutdown, name="early-shutdown")
        stopper.start()
        wait_until(lambda: server._BaseServer__shutdown_request)
        call_with_deadline(lambda: server.serve_forever(POLL), rescue=server.shutdown)
        stopper.join(5)
    finally:
        server.server_close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_shutdown_returns_fast_and_every_worker_is_gone_when_it_returns(recorder, handoff):
    """Default heartbeat, poll_interval=30: shutdown() takes well under 2 s, and every worker
    has exited and been reaped by the time it returns."""
    server = sockherd.PreforkTCPServer(
        LOOPBACK, recording_handler(recorder), workers=2, handoff=handoff
    )
    loop = threading.Thread(target=server.serve_forever, args=(LONG_POLL,), name="serve_forever")
    loop.start()
    try:
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: [w["state"] for w in server.worker_stats()] == ["idle", "idle"])
        pids = worker_pids(server)
        # Idle means blocked in accept()/poll(), where a signal interrupts the wait (see
        # the next test for a SIGTERM that lands while a worker runs Python code).
        wait_until(lambda: all(psutil.Process(pid).status() == "sleeping" for pid in pids))
        start = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - start
        gone = not any(psutil.pid_exists(pid) for pid in pids)
        assert children() == set()
    finally:
        server.shutdown()
        loop.join(10)
        server.server_close()
    assert gone
    assert elapsed < 2.0


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_a_worker_stops_after_a_sigterm_that_arrived_while_its_handler_ran_python_code(
    recorder, handoff, monkeypatch
):
    """shutdown() while a CPU-bound request runs: the worker gets its SIGTERM in Python code,
    finishes the request, then exits promptly (not after graceful_timeout and a SIGKILL).

    On CPython 3.13.0 a process forked from a non-main thread (workers are forked from the
    serve_forever() thread) does not run a Python signal handler for a signal that lands
    in Python code until something calls PyErr_CheckSignals(); the worker's loops never
    do, so a stop must not depend on the SIGTERM handler alone.
    """
    from sockherd.supervisor import worker_pool

    released = mmap.mmap(-1, 1)  # anonymous shared memory: the worker sees the test's write
    sigterm_sent = threading.Event()
    real_signal = worker_pool.send_signal

    def signal_and_tell(pid: int, signum: int) -> None:
        real_signal(pid, signum)
        if signum == signal.SIGTERM:
            sigterm_sent.set()

    monkeypatch.setattr(worker_pool, "send_signal", signal_and_tell)

    class Spinning(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            recorder.add("spinning")
            deadline = time.monotonic() + 10
            while released[0] == 0 and time.monotonic() < deadline:
                pass  # CPU-bound Python: no syscall a signal could interrupt
            self.request.send(b"done")  # not sendall(), which runs pending signal handlers

    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, Spinning, handoff, graceful_timeout=2.5)
    loop = threading.Thread(target=server.serve_forever, args=(POLL,), name="serve_forever")
    loop.start()
    stopper = threading.Thread(target=server.shutdown, name="shutdown")
    try:
        with socket.create_connection(server.server_address, timeout=10) as client:
            client.shutdown(socket.SHUT_WR)
            wait_until(lambda: "spinning" in recorder.texts())
            (worker,) = worker_pids(server)
            stopper.start()
            assert sigterm_sent.wait(5)

            def delivered() -> bool:  # no longer pending: the worker has taken the signal
                with open(f"/proc/{worker}/status") as status:
                    fields = dict(line.split(":", 1) for line in status)
                pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
                return not pending & (1 << (signal.SIGTERM - 1))

            wait_until(delivered)
            released[0] = 1
            reply = recv_all(client)
            finished = time.monotonic()
        stopper.join(10)
        stopped_after = time.monotonic() - finished
    finally:
        released[0] = 1
        if stopper.ident is None:
            server.shutdown()
        stopper.join(10)
        loop.join(10)
        server.server_close()
        released.close()
    assert reply == b"done"
    assert stopped_after < 1.5  # a heartbeat or two, not graceful_timeout


class SignalStorm:
    """Send SIGUSR2 to the main thread every few milliseconds from a helper thread.

    SIGUSR2 is none of the supervisor's signals, so only the test's handler sees it.
    """

    def __init__(self) -> None:
        self.received: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, name="signal-storm")
        self._main = threading.main_thread().ident

    def _send(self) -> None:
        while not self._stop.wait(0.005):
            signal.pthread_kill(self._main, signal.SIGUSR2)  # type: ignore[arg-type]

    def __enter__(self) -> SignalStorm:
        assert threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(
            signal.SIGUSR2, lambda signum, frame: self.received.append(time.monotonic())
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        signal.signal(signal.SIGUSR2, self._previous)


def test_signals_during_serve_forever_in_the_main_thread_do_not_stop_the_supervisor(recorder):
    """serve_forever() in the main thread (as a real supervisor runs it) keeps supervising
    and serving while signals interrupt its wait.  reap_orphans=False: the test process must
    not become a child subreaper."""
    server = prefork(
        sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder), reap_orphans=False
    )
    replies: list[bytes] = []
    storm = SignalStorm()

    def client_then_shutdown() -> None:
        try:
            wait_until(lambda: worker_pids(server))
            start = time.monotonic()
            wait_until(lambda: sum(arrival > start for arrival in storm.received) >= 3)
            replies.append(tcp_request(server.server_address))
            start = time.monotonic()
            wait_until(lambda: sum(arrival > start for arrival in storm.received) >= 3)
            replies.append(tcp_request(server.server_address, b"again"))
        finally:
            server.shutdown()

    helper = threading.Thread(target=client_then_shutdown, name="client")
    try:
        with storm:
            helper.start()
            server.serve_forever(POLL)
    finally:
        helper.join(10)
        server.server_close()
    assert replies == [b"echo:ping\n", b"echo:again"]


# --- concurrency (test_threading) -----------------------------------------------------------


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_two_requests_are_handled_at_the_same_time_by_two_workers(recorder, handoff):
    server = prefork(
        sockherd.PreforkTCPServer, LOOPBACK, recording_handler(recorder), handoff, workers=2
    )
    with serving(server, POLL):
        with (
            socket.create_connection(server.server_address, timeout=5) as first,
            socket.create_connection(server.server_address, timeout=5) as second,
        ):
            # Both handlers are inside handle(), each waiting for its own client.
            wait_until(lambda: recorder.texts().count("handle") == 2)
            for client in (first, second):
                client.sendall(b"both")
                client.shutdown(socket.SHUT_WR)
            replies = [recv_all(first), recv_all(second)]
    assert replies == [b"echo:both", b"echo:both"]
    handled_by = [pid for pid, text in recorder.entries() if text == "handle"]
    assert len(set(handled_by)) == 2 and os.getpid() not in handled_by


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_shutdown_lets_a_request_in_progress_finish(recorder, handoff):
    """As server_close() waits for handler threads (block_on_close), shutdown() waits for a
    worker's request in progress: it does not return before it, and the client gets it all."""
    server = prefork(
        sockherd.PreforkTCPServer,
        LOOPBACK,
        recording_handler(recorder),
        handoff,
        graceful_timeout=30.0,
    )
    loop = threading.Thread(target=server.serve_forever, args=(POLL,), name="serve_forever")
    loop.start()
    stopper = threading.Thread(target=server.shutdown, name="shutdown")
    try:
        with socket.create_connection(server.server_address, timeout=5) as client:
            client.sendall(b"half")
            wait_until(lambda: "handle" in recorder.texts())
            from sockherd.supervisor.arbiter import supervising

            arbiter = supervising(server)
            stopper.start()
            wait_until(lambda: arbiter.snapshot().state == "draining")
            assert stopper.is_alive()  # the handler cannot end before the client's EOF
            client.sendall(b"-and-the-rest")
            client.shutdown(socket.SHUT_WR)
            reply = recv_all(client)
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        if stopper.ident is None:
            server.shutdown()
        stopper.join(10)
        loop.join(10)
        server.server_close()
    assert reply == b"echo:half-and-the-rest"


# --- request handlers inside workers (test_handlers) ----------------------------------------


def serve_one(handler: type, handoff: str, payload: bytes = b"", **settings: Any) -> bytes:
    """Serve one TCP request with `handler` in a one-worker pool; return the reply."""
    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, handler, handoff, **settings)
    with serving(server, POLL):
        return tcp_request(server.server_address, payload)


def reply_with(handler: Any, seen: Any) -> None:
    """Send what the handler saw back to the client, repr()-encoded."""
    handler.connection.sendall(repr(seen).encode())


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_wfile_is_the_unbuffered_socket_writer_of_the_connection(handoff):
    class Handler(sockherd.StreamRequestHandler):
        def handle(self) -> None:
            reply_with(
                self,
                (
                    type(self.wfile).__name__,
                    isinstance(self.wfile, io.BufferedIOBase),
                    self.wfile.writable(),
                    self.wfile.fileno() == self.request.fileno() != -1,
                    self.connection is self.request,
                ),
            )

    reply = serve_one(Handler, handoff)
    assert ast.literal_eval(reply.decode()) == ("_SocketWriter", True, True, True, True)


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_wfile_write_returns_the_byte_count_of_a_non_byte_buffer(handoff):
    payload = array.array("i", [1, 2, 3, 4])

    class Handler(sockherd.StreamRequestHandler):
        def handle(self) -> None:
            written = self.wfile.write(payload)
            self.wfile.write(b"|%d" % written)

    expected = payload.tobytes() + b"|%d" % (payload.itemsize * len(payload))
    assert serve_one(Handler, handoff) == expected


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_wfile_write_sends_a_large_payload_in_full(handoff):
    payload = bytes(range(256)) * 16384  # 4 MiB, far more than the socket buffers hold

    class Handler(sockherd.StreamRequestHandler):
        def handle(self) -> None:
            written = self.wfile.write(payload)
            self.wfile.write(b"|%d" % written)

    assert serve_one(Handler, handoff) == payload + b"|%d" % len(payload)


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_wfile_sends_without_flush(recorder, handoff):
    class Handler(sockherd.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"hello")
            recorder.add("written")
            self.rfile.readline()  # hold the handler (and finish()) until the client says so

    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, Handler, handoff)
    with serving(server, POLL):
        with socket.create_connection(server.server_address, timeout=5) as client:
            wait_until(lambda: "written" in recorder.texts())
            arrived_before_finish = client.recv(5)
            client.sendall(b"go\n")
            assert recv_all(client) == b""
    assert arrived_before_finish == b"hello"


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_wbufsize_minus_one_buffers_until_finish(recorder, handoff):
    class Handler(sockherd.StreamRequestHandler):
        wbufsize = -1

        def handle(self) -> None:
            self.wfile.write(b"buffered")
            recorder.add(f"written {type(self.wfile).__name__}")
            self.rfile.readline()  # hold the handler until the client has looked

    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, Handler, handoff)
    with serving(server, POLL):
        with socket.create_connection(server.server_address, timeout=5) as client:
            wait_until(lambda: any(t.startswith("written") for t in recorder.texts()))
            # Unbuffered, the bytes would already be in the client's receive queue.
            sent_before_finish = bool(select.select([client], [], [], 0.1)[0])
            client.sendall(b"go\n")
            received = recv_all(client)
    assert "written BufferedWriter" in recorder.texts()
    assert sent_before_finish is False
    assert received == b"buffered"


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_rfile_is_buffered_by_default(handoff):
    class Handler(sockherd.StreamRequestHandler):
        def handle(self) -> None:
            reply_with(self, (type(self.rfile).__name__, self.rfile.readline()))

    reply = serve_one(Handler, handoff, b"line\nrest")
    assert ast.literal_eval(reply.decode()) == ("BufferedReader", b"line\n")


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_rbufsize_zero_gives_a_raw_reader(handoff):
    class Handler(sockherd.StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            reply_with(
                self,
                (
                    isinstance(self.rfile, io.RawIOBase),
                    isinstance(self.rfile, socket.SocketIO),
                    self.rfile.read(4),
                ),
            )

    reply = serve_one(Handler, handoff, b"data")
    assert ast.literal_eval(reply.decode()) == (True, True, b"data")


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_finish_closes_the_files_but_not_the_connection(handoff):
    class Handler(sockherd.StreamRequestHandler):
        def finish(self) -> None:
            super().finish()
            reply_with(self, (self.rfile.closed, self.wfile.closed, self.connection.fileno() != -1))

    reply = serve_one(Handler, handoff)
    assert ast.literal_eval(reply.decode()) == (True, True, True)


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_timeout_attribute_times_out_a_silent_client(handoff):
    class Handler(sockherd.StreamRequestHandler):
        timeout = 0.1

        def handle(self) -> None:
            try:
                outcome: Any = self.rfile.readline()
            except TimeoutError as error:  # socket.timeout is an alias since 3.10
                outcome = type(error).__name__
            reply_with(self, (self.connection.gettimeout(), outcome))

    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, Handler, handoff)
    with serving(server, POLL):
        with socket.create_connection(server.server_address, timeout=5) as client:
            reply = recv_all(client)  # sends nothing, never half-closes
    assert ast.literal_eval(reply.decode()) == (0.1, "TimeoutError")


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_connection_has_no_timeout_by_default(handoff):
    """Neither a Python timeout nor the listener's heartbeat SO_RCVTIMEO (accept mode)."""

    class Handler(sockherd.StreamRequestHandler):
        def handle(self) -> None:
            rcvtimeo = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
            reply_with(self, (self.connection.gettimeout(), rcvtimeo))

    server = prefork(sockherd.PreforkTCPServer, LOOPBACK, Handler, handoff)
    with serving(server, POLL):
        wait_until(lambda: worker_pids(server))  # the listener has its heartbeat timeout
        reply = tcp_request(server.server_address, b"")
    assert ast.literal_eval(reply.decode()) == (socket.getdefaulttimeout(), NO_RCVTIMEO)


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_disable_nagle_algorithm_sets_tcp_nodelay(handoff):
    class Handler(sockherd.StreamRequestHandler):
        disable_nagle_algorithm = True

        def handle(self) -> None:
            reply_with(self, self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    assert int(serve_one(Handler, handoff)) != 0


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_stream_nagle_algorithm_stays_enabled_by_default(handoff):
    class Handler(sockherd.StreamRequestHandler):
        def handle(self) -> None:
            reply_with(self, self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    assert int(serve_one(Handler, handoff)) == 0


# --- datagram and Unix-domain pools ---------------------------------------------------------


@contextlib.contextmanager
def udp_pool(handler: type, handoff: str = "accept", **settings: Any) -> Iterator[tuple]:
    """A serving PreforkUDPServer and a client socket aimed at it."""
    server = prefork(sockherd.PreforkUDPServer, LOOPBACK, handler, handoff, **settings)
    with serving(server, POLL):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            yield server, client


def test_datagram_handler_files_are_bytesio_over_the_packet():
    class Handler(sockherd.DatagramRequestHandler):
        def handle(self) -> None:
            seen = (type(self.rfile).__name__, type(self.wfile).__name__, self.packet)
            self.wfile.write(repr((*seen, self.rfile.read())).encode())

    with udp_pool(Handler) as (server, client):
        client.sendto(b"datagram", server.server_address)
        reply = client.recv(1000)
    assert ast.literal_eval(reply.decode()) == ("BytesIO", "BytesIO", b"datagram", b"datagram")


@pytest.mark.parametrize("handoff", HANDOFFS)  # datagram pools read in workers either way
def test_datagram_handler_replies_through_the_shared_server_socket(handoff):
    class Handler(sockherd.DatagramRequestHandler):
        def handle(self) -> None:
            shared = self.socket is self.server.socket
            self.wfile.write(self.rfile.read().upper() + (b" shared" if shared else b" copy"))

    with udp_pool(Handler, handoff, workers=2) as (server, client):
        client.sendto(b"ping", server.server_address)
        assert client.recvfrom(100) == (b"PING shared", server.server_address)
        client.sendto(b"again", server.server_address)
        assert client.recvfrom(100) == (b"AGAIN shared", server.server_address)
        assert server.socket.fileno() != -1  # no request's "close" closed it


def test_datagram_handler_sends_an_empty_reply_when_nothing_was_written():
    with udp_pool(sockherd.DatagramRequestHandler) as (server, client):
        client.sendto(b"ping", server.server_address)
        assert client.recvfrom(100) == (b"", server.server_address)


def test_udp_pool_truncates_datagrams_to_max_packet_size():
    class Handler(sockherd.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d" % len(self.packet))

    with udp_pool(Handler) as (server, client):
        client.sendto(b"x" * 10000, server.server_address)
        assert client.recv(100) == b"8192"


def test_unix_datagram_pool_replies_to_a_bound_client(unix_paths):
    server_path, client_path = unix_paths

    class Handler(sockherd.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper() + b" " + self.client_address.encode())

    server = prefork(sockherd.PreforkUnixDatagramServer, server_path, Handler)
    assert server.server_address == server_path
    with serving(server, POLL):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.bind(client_path)
            client.sendto(b"ping", server_path)
            assert client.recvfrom(200) == (b"PING " + client_path.encode(), server_path)


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_unix_stream_pool_serves_at_its_socket_path(unix_paths, handoff):
    path = unix_paths[0]

    class Handler(sockherd.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    server = prefork(sockherd.PreforkUnixStreamServer, path, Handler, handoff)
    assert server.server_address == path
    with serving(server, POLL):
        for line in (b"ping\n", b"pong\n"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(5)
                client.connect(path)
                client.sendall(line)
                assert recv_all(client) == line.upper()


def test_unix_stream_pool_close_leaves_the_socket_file_and_cannot_bind_over_it(unix_paths):
    path = unix_paths[0]
    server = prefork(sockherd.PreforkUnixStreamServer, path, sockherd.StreamRequestHandler)
    server.server_close()
    assert server.socket.fileno() == -1
    assert os.path.exists(path)
    with pytest.raises(sockherd.BindError) as caught:
        prefork(sockherd.PreforkUnixStreamServer, path, sockherd.StreamRequestHandler)
    assert caught.value.errno == errno.EADDRINUSE


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
