"""The path of one request through the server hooks, compared with CPython's socketserver.

Spec items 15-23: `get_request` -> `verify_request` -> `process_request` ->
`finish_request` -> `shutdown_request` -> `close_request`, `handle_error` for an
`Exception` (then `shutdown_request`), `shutdown_request` then re-raise for a
`BaseException`, OSErrors from `get_request` dropped silently, the default
`handle_error` output, the context manager, `server_close()` idempotence and the
`get_request` override point.

Every test here is differential: it runs the same scenario against stock
`socketserver` and `sockherd` (the `ss` fixture) and asserts the same recorded
hook list or output for both.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import socketserver as stock_socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import serving, tcp_request, wait_until

import sockherd

LOOPBACK = ("127.0.0.1", 0)
POLL = 0.05  # small, so stock socketserver's shutdown() does not slow the suite down
DASHES = "-" * 40


class HookLog:
    """Thread-safe record of hook calls: (hook name, ident of the calling thread)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int]] = []

    def add(self, name: str) -> None:
        self.entries.append((name, threading.get_ident()))  # list.append is atomic

    def names(self, *, skip: tuple[str, ...] = ()) -> list[str]:
        return [name for name, _ in self.entries if name not in skip]

    def by_thread(self, caller: int) -> list[tuple[str, str]]:
        """Hook names tagged "caller" (the thread given) or "worker" (any other)."""
        return [(name, "caller" if ident == caller else "worker") for name, ident in self.entries]


def make_handler(ss: Any, log: HookLog, behaviour: str = "echo") -> type:
    """A handler that records its construction and handle(), reads to EOF, then acts.

    behaviour: "echo" replies b"echo:" + request; "raise" raises ValueError;
    "systemexit" / "keyboardinterrupt" raise those BaseExceptions.
    """

    class Handler(ss.BaseRequestHandler):
        def __init__(self, request: Any, client_address: Any, server: Any) -> None:
            log.add("handler.__init__")
            super().__init__(request, client_address, server)

        def handle(self) -> None:
            log.add("handle")
            chunks = []
            while chunk := self.request.recv(65536):
                chunks.append(chunk)
            if behaviour == "raise":
                raise ValueError("boom from the handler")
            if behaviour == "systemexit":
                raise SystemExit(3)
            if behaviour == "keyboardinterrupt":
                raise KeyboardInterrupt
            self.request.sendall(b"echo:" + b"".join(chunks))

    return Handler


def make_server(base: type, log: HookLog, handler: type, **attributes: Any) -> Any:
    """Instantiate a subclass of `base` whose hooks record themselves, then call super."""

    class RecordingServer(base):  # type: ignore[valid-type, misc]
        def get_request(self) -> Any:
            log.add("get_request")
            return super().get_request()

        def verify_request(self, request: Any, client_address: Any) -> bool:
            log.add("verify_request")
            return super().verify_request(request, client_address)

        def process_request(self, request: Any, client_address: Any) -> None:
            log.add("process_request")
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            log.add("finish_request")
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            log.add("shutdown_request")
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            log.add("close_request")
            super().close_request(request)

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.add("handle_error")
            super().handle_error(request, client_address)

        def service_actions(self) -> None:
            log.add("service_actions")
            super().service_actions()

    for name, value in attributes.items():
        setattr(RecordingServer, name, value)
    return RecordingServer(LOOPBACK, handler)


def exchange(address: tuple[str, int], payload: bytes, result: dict[str, Any]) -> None:
    """Connect, send `payload`, half-close, read to EOF; store the reply in `result`.

    A reset after the server closed counts as end of stream (`result["reset"]`).
    """
    with socket.create_connection(address, timeout=5) as client:
        result["client_address"] = client.getsockname()
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := client.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            result["reset"] = True
        result["reply"] = b"".join(chunks)


@contextlib.contextmanager
def client_in_thread(address: tuple[str, int], payload: bytes = b"ping\n") -> Iterator[dict]:
    """Run one `exchange()` in a thread while the body serves it; join the thread on exit."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            exchange(address, payload, result)
        except BaseException as error:  # reported through `result`
            result["error"] = error

    thread = threading.Thread(target=run, name="client")
    thread.start()
    try:
        yield result
    finally:
        thread.join(10)


ONE_REQUEST = [
    "get_request",
    "verify_request",
    "process_request",
    "finish_request",
    "handler.__init__",
    "handle",
    "shutdown_request",
    "close_request",
]


def test_sync_handle_request_calls_hooks_in_stock_order(ss: Any) -> None:
    """One request through a synchronous TCPServer.handle_request(): the exact hook order.

    handle_request() never calls service_actions(), so the list ends at close_request.
    """
    log = HookLog()
    server = make_server(ss.TCPServer, log, make_handler(ss, log))
    try:
        with client_in_thread(server.server_address) as client:
            assert server.handle_request() is None
    finally:
        server.server_close()
    assert client.get("error") is None
    assert client["reply"] == b"echo:ping\n"
    assert log.names() == ONE_REQUEST


def test_serve_forever_calls_service_actions_after_the_request_hooks(ss: Any) -> None:
    """Under serve_forever() the same hooks run, then service_actions() in that iteration."""
    log = HookLog()
    server = make_server(ss.TCPServer, log, make_handler(ss, log))
    with serving(server, POLL):
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: "service_actions" in log.names()[log.names().index("get_request") :])
    names = log.names()
    start = names.index("get_request")
    assert names[start : start + len(ONE_REQUEST) + 1] == ONE_REQUEST + ["service_actions"]


def test_threading_server_runs_request_hooks_in_the_worker_thread(ss: Any) -> None:
    """ThreadingTCPServer: accept, verify and process in the caller; the rest in the thread."""
    log = HookLog()
    server = make_server(ss.ThreadingTCPServer, log, make_handler(ss, log))
    try:
        with client_in_thread(server.server_address) as client:
            server.handle_request()
    finally:
        server.server_close()  # joins the request thread
    assert client["reply"] == b"echo:ping\n"
    assert log.by_thread(threading.get_ident()) == [
        ("get_request", "caller"),
        ("verify_request", "caller"),
        ("process_request", "caller"),
        ("finish_request", "worker"),
        ("handler.__init__", "worker"),
        ("handle", "worker"),
        ("shutdown_request", "worker"),
        ("close_request", "worker"),
    ]


def test_threading_server_handler_exception_calls_handle_error_before_shutdown_request(
    ss: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """ThreadingTCPServer: an Exception in the handler -> handle_error, then shutdown_request,
    both in the worker thread."""
    log = HookLog()
    server = make_server(ss.ThreadingTCPServer, log, make_handler(ss, log, "raise"))
    try:
        with client_in_thread(server.server_address) as client:
            server.handle_request()
    finally:
        server.server_close()
    assert client["reply"] == b""
    assert log.by_thread(threading.get_ident()) == [
        ("get_request", "caller"),
        ("verify_request", "caller"),
        ("process_request", "caller"),
        ("finish_request", "worker"),
        ("handler.__init__", "worker"),
        ("handle", "worker"),
        ("handle_error", "worker"),
        ("shutdown_request", "worker"),
        ("close_request", "worker"),
    ]
    assert "ValueError: boom from the handler" in capsys.readouterr().err


def test_verify_request_false_only_shuts_down_the_request(ss: Any) -> None:
    """verify_request() returning False: shutdown_request/close_request only, no handler."""
    log = HookLog()

    def refuse(self: Any, request: Any, client_address: Any) -> bool:
        log.add("verify_request")
        return False

    server = make_server(ss.TCPServer, log, make_handler(ss, log), verify_request=refuse)
    try:
        with client_in_thread(server.server_address, payload=b"") as client:
            server.handle_request()
    finally:
        server.server_close()
    assert client["reply"] == b""
    assert log.names() == ["get_request", "verify_request", "shutdown_request", "close_request"]


def test_handler_exception_calls_handle_error_then_shutdown_request_and_keeps_serving(
    ss: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Synchronous server: an Exception -> handle_error, shutdown_request; the loop goes on."""
    log = HookLog()
    raising = make_handler(ss, log, "raise")
    echoing = make_handler(ss, log, "echo")
    handlers = iter([raising, echoing])

    def next_handler(request: Any, client_address: Any, server: Any) -> Any:
        return next(handlers)(request, client_address, server)

    server = make_server(ss.TCPServer, log, next_handler)
    with serving(server, POLL) as thread:
        assert tcp_request(server.server_address) == b""
        assert tcp_request(server.server_address) == b"echo:ping\n"
        assert thread.is_alive()
    assert log.names(skip=("service_actions",)) == [
        "get_request",
        "verify_request",
        "process_request",
        "finish_request",
        "handler.__init__",
        "handle",
        "handle_error",
        "shutdown_request",
        "close_request",
        *ONE_REQUEST,
    ]
    assert "ValueError: boom from the handler" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("behaviour", "exception"),
    [("systemexit", SystemExit), ("keyboardinterrupt", KeyboardInterrupt)],
)
def test_base_exception_in_sync_handler_shuts_down_request_and_propagates(
    ss: Any, capsys: pytest.CaptureFixture[str], behaviour: str, exception: type
) -> None:
    """A BaseException from a synchronous handler: shutdown_request (no handle_error), then it
    propagates out of handle_request()."""
    log = HookLog()
    server = make_server(ss.TCPServer, log, make_handler(ss, log, behaviour))
    try:
        with client_in_thread(server.server_address) as client:
            with pytest.raises(exception):
                server.handle_request()
    finally:
        server.server_close()
    assert client["reply"] == b""
    assert log.names() == [
        "get_request",
        "verify_request",
        "process_request",
        "finish_request",
        "handler.__init__",
        "handle",
        "shutdown_request",
        "close_request",
    ]
    assert capsys.readouterr().err == ""


def test_oserror_from_get_request_is_dropped_silently(
    ss: Any, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """An OSError (ECONNABORTED) from get_request(): handle_request() returns None, no other
    hook runs, nothing is printed or logged."""
    log = HookLog()

    def aborting_get_request(self: Any) -> Any:
        log.add("get_request")
        connection, _address = self.socket.accept()
        connection.close()
        raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")

    server = make_server(ss.TCPServer, log, make_handler(ss, log), get_request=aborting_get_request)
    try:
        with client_in_thread(server.server_address, payload=b"") as client:
            assert server.handle_request() is None
    finally:
        server.server_close()
    assert client["reply"] == b""
    assert log.names() == ["get_request"]
    assert capfd.readouterr() == ("", "")
    assert caplog.records == []


def handle_error_output(ss: Any, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], Any]:
    """Serve one request whose handler raises; return the stderr lines and the client address."""
    log = HookLog()
    server = ss.TCPServer(LOOPBACK, make_handler(ss, log, "raise"))
    try:
        capsys.readouterr()
        with client_in_thread(server.server_address) as client:
            server.handle_request()
    finally:
        server.server_close()
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines(), client["client_address"]


def test_handle_error_default_stderr_format(ss: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The default handle_error(): dashes, the client address line, the traceback, dashes."""
    lines, client_address = handle_error_output(ss, capsys)
    assert client_address[0] == "127.0.0.1"
    assert lines[0] == DASHES
    assert lines[1] == f"Exception occurred during processing of request from {client_address}"
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-2] == "ValueError: boom from the handler"
    assert lines[-1] == DASHES
    assert any(line.strip() == 'raise ValueError("boom from the handler")' for line in lines)
    assert lines.count(DASHES) == 2


def test_handle_error_output_matches_stock(capsys: pytest.CaptureFixture[str]) -> None:
    """Stock and sockherd print the same banner and the same traceback from the handler frame
    on (the frames above it are each module's own source)."""

    def normalised(module: Any) -> tuple[list[str], list[str]]:
        lines, client_address = handle_error_output(module, capsys)
        lines = [line.replace(str(client_address), "CLIENT") for line in lines]
        handler_frame = next(i for i, line in enumerate(lines) if line.endswith(", in handle"))
        return lines[:3], lines[handler_frame:]

    assert normalised(stock_socketserver) == normalised(sockherd)


def test_context_manager_returns_the_server_and_closes_the_socket(ss: Any) -> None:
    """`with Server(...) as s`: s is the server; the listening socket is closed on exit."""
    server = ss.TCPServer(LOOPBACK, ss.BaseRequestHandler)
    with server as entered:
        assert entered is server
        assert server.socket.fileno() != -1
    assert server.socket.fileno() == -1


def test_context_manager_does_not_suppress_exceptions(ss: Any) -> None:
    """__exit__ closes the server and returns None, so the exception propagates."""

    class Marker(Exception):
        pass

    with pytest.raises(Marker):
        with ss.TCPServer(LOOPBACK, ss.BaseRequestHandler) as server:
            raise Marker
    assert server.socket.fileno() == -1
    assert server.__exit__(None, None, None) is None


@pytest.mark.parametrize("class_name", ["TCPServer", "ThreadingTCPServer"])
def test_server_close_twice_is_harmless(ss: Any, class_name: str) -> None:
    """server_close() after serve_forever() ran (and closed it once) can be called again."""
    log = HookLog()
    server = getattr(ss, class_name)(LOOPBACK, make_handler(ss, log))
    with serving(server, POLL):  # closes the server on exit
        assert tcp_request(server.server_address) == b"echo:ping\n"
    assert server.socket.fileno() == -1
    server.server_close()
    server.server_close()
    assert server.socket.fileno() == -1


def test_get_request_override_is_honoured(ss: Any) -> None:
    """The accept path goes through self.get_request(): a wrapped connection (as SSL-wrapping
    servers do) reaches the handler and is the object shut down and closed."""
    wrapped: list[Any] = []

    class WrappedConnection:
        def __init__(self, connection: socket.socket) -> None:
            self._connection = connection
            self.closed_by_server = False
            wrapped.append(self)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._connection, name)

        def close(self) -> None:
            self.closed_by_server = True
            self._connection.close()

    class WrappingServer(ss.TCPServer):
        def get_request(self) -> Any:
            connection, address = super().get_request()
            return WrappedConnection(connection), address

    class Handler(ss.BaseRequestHandler):
        def handle(self) -> None:
            while self.request.recv(65536):
                pass
            self.request.sendall(type(self.request).__name__.encode())

    server = WrappingServer(LOOPBACK, Handler)
    with serving(server, POLL):
        assert tcp_request(server.server_address) == b"WrappedConnection"
        wait_until(lambda: wrapped and wrapped[0].closed_by_server)
    assert len(wrapped) == 1
