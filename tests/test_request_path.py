"""The path of one request through the server hooks, on every server kind.

Spec items 15-23: `get_request` -> `verify_request` -> `process_request` ->
`finish_request` -> `shutdown_request` -> `close_request`, `handle_error` for an
`Exception` (then `shutdown_request`), `shutdown_request` then re-raise for a
`BaseException`, OSErrors from `get_request` dropped silently, the default
`handle_error` output, the context manager, `server_close()` idempotence and the
`get_request` override point.

The tests taking `server_kind` run the same scenario on each kind (see
server_kinds.py): sync, thread, fork and the prefork pool in both hand-offs, and
CPython's servers of the models whose behaviour the test pins down (differential),
expecting the same hooks in the same order, split between the places the kind runs
them in.
The `handle_request()` tests run on the synchronous server of stock `socketserver`
and `sockherd` (the `ss` fixture): a prefork server has no handle_request().
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
from conftest import child_processes, tcp_request, wait_until, zombie_children
from server_kinds import (
    CLOSE,
    KIND,
    REQUEST_SIDE,
    Recorder,
    WrappedConnection,
    each_kind,
    recording_handler,
    recording_server,
    recording_server_class,
    recv_all,
    request_path,
    requests_path,
)

LOOPBACK = ("127.0.0.1", 0)
DASHES = "-" * 40
WITH_ERROR = [*REQUEST_SIDE, "handle_error:ValueError", *CLOSE]


def sync_kind(ss: Any) -> Any:
    """The synchronous kind of the module the `ss` fixture gives."""
    return KIND["stock-sync" if ss is stock_socketserver else "sync"]


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


def finished(recorder: Recorder, expected: dict[str, list[str]]) -> bool:
    """Whether as many close_request calls as `expected` holds have been recorded."""
    wanted = sum(hooks.count("close_request") for hooks in expected.values())
    return recorder.texts().count("close_request") >= wanted


# --- handle_request(): the synchronous server serving one request inline ------------------


def test_sync_handle_request_calls_hooks_in_stock_order(ss: Any, recorder: Recorder) -> None:
    """One request through a synchronous TCPServer.handle_request(): the exact hook order.

    handle_request() never calls service_actions(), so the list ends at close_request.
    """
    server = recording_server(sync_kind(ss), recorder, service_actions=True)
    try:
        with client_in_thread(server.server_address) as client:
            assert server.handle_request() is None
    finally:
        server.server_close()
    assert client.get("error") is None
    assert client["reply"] == b"echo:ping\n"
    assert recorder.texts() == request_path(sync_kind(ss), [*REQUEST_SIDE, *CLOSE])["loop"]


def test_handle_request_returns_none_when_get_request_fails(ss: Any, recorder: Recorder) -> None:
    """An OSError (ECONNABORTED) from get_request(): handle_request() returns None and no
    other hook runs (test_oserror_from_get_request_is_dropped_silently: the loop's view)."""

    def aborting_get_request(self: Any) -> Any:
        recorder.add("get_request aborted")
        connection, _address = self.socket.accept()
        connection.close()
        raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")

    server = recording_server(sync_kind(ss), recorder, get_request=aborting_get_request)
    try:
        with client_in_thread(server.server_address, payload=b"") as client:
            assert server.handle_request() is None
    finally:
        server.server_close()
    assert client["reply"] == b""
    assert recorder.texts() == ["get_request aborted"]


@pytest.mark.parametrize(
    ("payload", "exception"),
    [(b"systemexit", SystemExit), (b"keyboardinterrupt", KeyboardInterrupt)],
)
def test_base_exception_in_sync_handler_shuts_down_request_and_propagates(
    ss: Any,
    recorder: Recorder,
    capsys: pytest.CaptureFixture[str],
    payload: bytes,
    exception: type,
) -> None:
    """A BaseException from a synchronous handler: shutdown_request (no handle_error), then it
    propagates out of handle_request()."""
    server = recording_server(sync_kind(ss), recorder)
    try:
        with client_in_thread(server.server_address, payload) as client:
            with pytest.raises(exception):
                server.handle_request()
    finally:
        server.server_close()
    assert client["reply"] == b""
    assert recorder.texts() == request_path(sync_kind(ss), [*REQUEST_SIDE, *CLOSE])["loop"]
    assert capsys.readouterr().err == ""


# --- the request path on every kind ------------------------------------------------------


@each_kind(stock=("sync", "thread"))
def test_request_hooks_run_in_stock_order_where_the_kind_runs_them(
    server_kind: Any, recorder: Recorder
) -> None:
    """The serving thread, a request thread, a forked child or a worker: each place runs its
    part of the path in CPython's order, and process_request passes the request on before the
    handler side begins."""
    server = recording_server(server_kind, recorder)
    expected = request_path(server_kind, [*REQUEST_SIDE, *CLOSE])
    with server_kind.serving(server) as loop:
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: finished(recorder, expected))
        workers = server_kind.worker_pids(server)
    assert recorder.by_place(loop) == expected
    texts = recorder.texts()
    if "process_request" in texts:
        assert texts.index("process_request") < texts.index("finish_request")
    if server_kind.prefork:
        assert recorder.pids("handle") <= workers


@each_kind(
    stock=("sync",),
    skip={
        "prefork-accept": "workers run every request hook, not the loop",
        "prefork-threads": "workers run every request hook, not the loop",
    },
)
def test_serving_thread_calls_service_actions_after_its_request_hooks(
    server_kind: Any, recorder: Recorder
) -> None:
    """Under serve_forever() the serving thread runs its part of the path, then
    service_actions() in that same iteration."""
    server = recording_server(server_kind, recorder, service_actions=True)
    ours = request_path(server_kind, [*REQUEST_SIDE, *CLOSE])["loop"]

    def loop_names() -> list[str]:
        return recorder.by_place(loop).get("loop", [])

    def after_request() -> bool:
        names = loop_names()
        return "get_request" in names and "service_actions" in names[names.index("get_request") :]

    with server_kind.serving(server) as loop:
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(after_request)
    names = loop_names()
    start = names.index("get_request")
    assert names[start : start + len(ours) + 1] == [*ours, "service_actions"]


@each_kind(stock=("sync", "thread"))
def test_handler_exception_calls_handle_error_then_shutdown_request_and_serving_goes_on(
    server_kind: Any, recorder: Recorder, capfd: pytest.CaptureFixture[str]
) -> None:
    """An Exception from the handler: handle_error, then shutdown_request, where the handler
    ran; the next request is served as usual."""
    server = recording_server(server_kind, recorder)
    expected = requests_path(server_kind, WITH_ERROR, [*REQUEST_SIDE, *CLOSE])
    with server_kind.serving(server) as loop:
        assert tcp_request(server.server_address, b"raise") == b""
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: finished(recorder, expected))
        assert loop.is_alive()
    assert recorder.by_place(loop) == expected
    assert "ValueError: boom from the handler" in capfd.readouterr().err


@each_kind()
def test_handler_exception_is_counted_as_an_error(server_kind: Any, recorder: Recorder) -> None:
    """sockherd counts a request whose handler raised as an error, one that did not as ok:
    in request_stats where the serving process sees requests end, in a pool's scoreboard."""
    server = server_kind.server(LOOPBACK, recording_handler(server_kind, recorder))
    with server_kind.serving(server):
        assert tcp_request(server.server_address, b"raise") == b""
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: server_kind.request_counts(server) == (2, 1))


@each_kind(stock=("sync",))
def test_verify_request_false_only_shuts_down_the_request(
    server_kind: Any, recorder: Recorder
) -> None:
    """verify_request() returning False: shutdown_request/close_request only, where
    get_request ran; no handler, and no request counted."""

    def refuse(self: Any, request: Any, client_address: Any) -> bool:
        recorder.add("verify_request")
        return False

    server = recording_server(server_kind, recorder, verify_request=refuse)
    place = "child" if server_kind.handoff == "accept" else "loop"
    with server_kind.serving(server) as loop:
        assert tcp_request(server.server_address, b"") == b""
        wait_until(lambda: "close_request" in recorder.texts())
        counted = None if server_kind.stock else server_kind.request_counts(server)
    refused = ["get_request", "verify_request", "shutdown_request", "close_request"]
    assert recorder.by_place(loop) == {place: refused}
    assert counted in (None, (0, 0))


@pytest.mark.parametrize("payload", [b"systemexit", b"keyboardinterrupt"])
@each_kind(
    stock=("thread",),
    skip={
        "sync": "it propagates out of the loop "
        "(test_base_exception_in_sync_handler_shuts_down_request_and_propagates)"
    },
)
def test_base_exception_in_a_handler_shuts_down_the_request_without_handle_error(
    server_kind: Any,
    recorder: Recorder,
    payload: bytes,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SystemExit or KeyboardInterrupt from a handler in a thread, a forked child or a worker:
    shutdown_request (no handle_error) ends the request, the BaseException ends the thread or
    the process, and the next request is served.  A pool replaces the worker it ended."""
    ended: list[type] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: ended.append(args.exc_type))
    server = recording_server(server_kind, recorder)
    expected = requests_path(server_kind, *[[*REQUEST_SIDE, *CLOSE]] * 2)
    with server_kind.serving(server) as loop:
        first_workers = server_kind.worker_pids(server)
        assert tcp_request(server.server_address, payload) == b""
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: finished(recorder, expected))
        if server_kind.threads > 1:  # the worker it ended is replaced
            wait_until(lambda: not first_workers & server_kind.worker_pids(server))
    if server_kind.threads > 1:
        # The worker ends once its requests finish: the second one may be its own or
        # its replacement's, so the order across processes varies; the hooks do not.
        assert sorted(recorder.texts()) == sorted(expected["child"])
    else:
        assert recorder.by_place(loop) == expected
    assert "Exception occurred during processing" not in capfd.readouterr().err
    assert zombie_children() == []
    if server_kind.model == "thread":
        assert ended == [SystemExit if payload == b"systemexit" else KeyboardInterrupt]
    if server_kind.prefork:
        died_in, replaced_by = (pid for pid, _ident, text in recorder.entries() if text == "handle")
        assert died_in in first_workers
        if server_kind.threads == 1:
            assert replaced_by not in first_workers


@each_kind(stock=("sync",))
def test_oserror_from_get_request_is_dropped_silently(
    server_kind: Any,
    recorder: Recorder,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ECONNABORTED from get_request() (in the loop, or a worker in accept mode): no other hook
    runs for it, nothing is printed or logged, and the next connection is served."""

    class AbortingServer(server_kind.server_class()):  # type: ignore[misc]
        aborted = False  # per process: the loop's, or the one worker's (accept)

        def get_request(self) -> Any:
            connection, address = self.socket.accept()
            if not self.aborted:
                self.aborted = True
                connection.close()
                recorder.add("get_request aborted")
                raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")
            recorder.add("get_request")
            return connection, address

    server = server_kind.server(
        LOOPBACK, recording_handler(server_kind, recorder), cls=AbortingServer
    )
    with server_kind.serving(server):
        first_workers = server_kind.worker_pids(server)
        assert tcp_request(server.server_address, b"") == b""
        assert tcp_request(server.server_address) == b"echo:ping\n"
        wait_until(lambda: "finish" in recorder.texts())
        assert server_kind.worker_pids(server) == first_workers
        logged = [r.getMessage() for r in caplog.records]
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


# --- handle_error()'s output -------------------------------------------------------------


def handle_error_output(kind: Any, capfd: pytest.CaptureFixture[str]) -> tuple[list[str], Any]:
    """Serve one request whose handler raises; return the stderr lines and the client address.

    The recording server's close_request comes after handle_error() has printed."""
    recorder = Recorder()
    try:
        server = recording_server(kind, recorder)
        with kind.serving(server):
            capfd.readouterr()
            with socket.create_connection(server.server_address, timeout=5) as client:
                client_address = client.getsockname()
                client.sendall(b"raise")
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == b""
            wait_until(lambda: finished(recorder, request_path(kind, WITH_ERROR)))
    finally:
        recorder.close()
    captured = capfd.readouterr()
    assert captured.out == ""
    return captured.err.splitlines(), client_address


@each_kind(stock=("sync",))
def test_handle_error_default_stderr_format(
    server_kind: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """The default handle_error(), wherever it runs: dashes, the client address line, the
    traceback, dashes."""
    lines, client_address = handle_error_output(server_kind, capfd)
    assert client_address[0] == "127.0.0.1"
    assert lines[0] == DASHES
    assert lines[1] == f"Exception occurred during processing of request from {client_address}"
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-2] == "ValueError: boom from the handler"
    assert lines[-1] == DASHES
    assert any(line.strip() == 'raise ValueError("boom from the handler")' for line in lines)
    assert lines.count(DASHES) == 2


@each_kind()
def test_handle_error_output_matches_stock_from_the_handler_frame_on(
    server_kind: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """Each kind prints what stock's synchronous TCPServer prints: the same banner and the same
    traceback from the handler's frame on (the frames above it are each module's own)."""

    def normalised(kind: Any) -> tuple[list[str], list[str]]:
        lines, client_address = handle_error_output(kind, capfd)
        lines = [line.replace(str(client_address), "CLIENT") for line in lines]
        handler_frame = next(i for i, line in enumerate(lines) if line.endswith(", in handle"))
        return lines[:3], lines[handler_frame:]

    assert normalised(server_kind) == normalised(KIND["stock-sync"])


# --- the server object: context manager, server_close() -----------------------------------


@each_kind(stock=("sync",))
def test_context_manager_returns_the_server_and_closes_the_socket(
    server_kind: Any, recorder: Recorder
) -> None:
    """`with Server(...) as s`: s is the server; it serves, and the listening socket stays open
    until the block ends (after serve_forever() returned, a pool having stopped its workers)."""
    server = server_kind.server(LOOPBACK, recording_handler(server_kind, recorder))
    with server as entered:
        assert entered is server
        loop = threading.Thread(target=server.serve_forever, args=(0.05,), name="serve_forever")
        loop.start()
        try:
            server_kind.wait_ready(server)
            assert tcp_request(server.server_address) == b"echo:ping\n"
        finally:
            server.shutdown()
            loop.join(10)
        assert server.socket.fileno() != -1
    assert server.socket.fileno() == -1
    assert child_processes() == set()


@each_kind(stock=("sync",))
def test_context_manager_does_not_suppress_exceptions(server_kind: Any) -> None:
    """__exit__ closes the server and returns None, so the exception propagates."""

    class Marker(Exception):
        pass

    with pytest.raises(Marker):
        with server_kind.server(LOOPBACK, server_kind.module.BaseRequestHandler) as server:
            raise Marker
    assert server.socket.fileno() == -1
    assert server.__exit__(None, None, None) is None


@each_kind(stock=("sync", "thread"))
def test_server_close_twice_is_harmless(server_kind: Any, recorder: Recorder) -> None:
    """server_close() after serve_forever() ran (and closed it once) can be called again."""
    server = server_kind.server(LOOPBACK, recording_handler(server_kind, recorder))
    with server_kind.serving(server):  # closes the server on exit
        assert tcp_request(server.server_address) == b"echo:ping\n"
    assert server.socket.fileno() == -1
    server.server_close()
    server.server_close()
    assert server.socket.fileno() == -1


# --- the get_request() override point -----------------------------------------------------


@each_kind(
    stock=("sync",),
    skip={
        "prefork-dispatch": "only a socket's fd can be passed to a worker; a wrapped connection "
        "is refused (test_prefork: test_dispatch_refuses_a_wrapped_connection_...)"
    },
)
def test_get_request_override_connection_reaches_the_handler_and_is_closed_by_the_server(
    server_kind: Any, recorder: Recorder
) -> None:
    """The accept path goes through self.get_request(): a wrapped connection (as SSL-wrapping
    servers return) reaches the handler and is the object shut down and closed, wherever the
    kind closes requests."""

    class WrappingServer(recording_server_class(server_kind, recorder)):  # type: ignore[misc]
        def get_request(self) -> Any:
            connection, address = super().get_request()
            return WrappedConnection(connection, recorder), address

    class Handler(server_kind.module.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            while self.request.recv(65536):
                pass
            self.request.sendall(type(self.request).__name__.encode())

    server = server_kind.server(LOOPBACK, Handler, cls=WrappingServer)
    closing = request_path(server_kind, [*REQUEST_SIDE, *CLOSE])
    closed_in = {place for place, hooks in closing.items() if "close_request" in hooks}
    with server_kind.serving(server) as loop:
        assert tcp_request(server.server_address) == b"WrappedConnection"
        wait_until(lambda: recorder.where("wrapper closed", loop) == closed_in)
        workers = server_kind.worker_pids(server)
    assert recorder.texts().count("wrapper closed") == len(closed_in)
    if server_kind.prefork:
        assert recorder.pids("wrapper closed") <= workers


@each_kind(stock=("sync",))
def test_get_request_override_client_address_reaches_the_handler(server_kind: Any) -> None:
    class TaggingServer(server_kind.server_class()):  # type: ignore[misc]
        def get_request(self) -> Any:
            connection, address = super().get_request()
            return connection, ("tagged", *address)

    class Handler(server_kind.module.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.request.sendall(repr(self.client_address).encode())

    server = server_kind.server(LOOPBACK, Handler, cls=TaggingServer)
    with server_kind.serving(server):
        with socket.create_connection(server.server_address, timeout=5) as client:
            expected = ("tagged", *client.getsockname())
            client.shutdown(socket.SHUT_WR)
            reply = recv_all(client)
    assert reply == repr(expected).encode()
