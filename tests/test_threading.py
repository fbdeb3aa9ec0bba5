"""ThreadingMixIn: one thread per request, `daemon_threads`, `block_on_close`, `_threads`;
and what every concurrent kind shares with it: requests handled at the same time, and a
stop that lets a request in progress finish.

The differential tests run against CPython's socketserver and sockherd (the
`ss` fixture, or `server_kind` with CPython's kinds) and must pass identically; they
cover spec section G (items 53-57) and the gaps listed in section Q (`daemon_threads`,
`server_close()` really waiting for threads).  The `server_kind` tests run on the
thread, fork and prefork kinds alike (server_kinds.py).

The tests at the end are sockherd-only and document deliberate differences:
`close_timeout` bounds how long `server_close()` waits for a stuck handler,
and `_Threads` prunes finished threads in amortised O(1) per request instead
of scanning the whole list on every append.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from time import monotonic
from typing import Any
from unittest import mock

import pytest
from conftest import serving, tcp_request, wait_until
from server_kinds import POLL, Recorder, ServerKind, each_kind, recording_handler, recv_all

import sockherd
from sockherd.server.threading_mixin import _Threads

LOOPBACK = ("127.0.0.1", 0)
WAIT = 5.0  # upper bound for any Event wait; reached only when a test fails
MIXIN_LOGGER = "sockherd.server.threading_mixin"


def _recording_handler(ss: Any, threads: list[threading.Thread]) -> type:
    """A handler that records the thread it runs in and reads the request to its end.

    Reading it all matters: closing a connection with unread data sends a RST,
    and the client's half-close in `tcp_request()` would then fail.
    """

    class Handler(ss.StreamRequestHandler):
        def handle(self) -> None:
            threads.append(threading.current_thread())
            self.rfile.read()

    return Handler


def _blocking_handler(
    ss: Any,
    threads: list[threading.Thread],
    started: threading.Event,
    release: threading.Event,
    done: list[bool] | None = None,
) -> type:
    """A handler that records its thread, sets `started`, then blocks until `release` is set."""

    class Handler(ss.BaseRequestHandler):
        def handle(self) -> None:
            threads.append(threading.current_thread())
            started.set()
            release.wait(WAIT)
            if done is not None:
                done.append(True)

    return Handler


# --- one thread per request -------------------------------------------------------------


def test_each_request_is_handled_in_a_new_thread(ss: Any) -> None:
    threads: list[threading.Thread] = []
    server = ss.ThreadingTCPServer(LOOPBACK, _recording_handler(ss, threads))
    with serving(server, POLL):
        for _ in range(3):
            tcp_request(server.server_address)
    assert len(threads) == 3
    assert len(set(threads)) == 3
    assert not any(thread.is_alive() for thread in threads)  # joined by server_close()


def test_handler_does_not_run_in_the_serving_thread(ss: Any) -> None:
    threads: list[threading.Thread] = []
    server = ss.ThreadingTCPServer(LOOPBACK, _recording_handler(ss, threads))
    with serving(server, POLL) as serving_thread:
        tcp_request(server.server_address)
    assert len(threads) == 1
    assert threads[0] is not serving_thread
    assert threads[0] is not threading.main_thread()


@each_kind(stock=("thread",), skip={"sync": "a synchronous server handles one request at a time"})
def test_two_requests_are_handled_at_the_same_time(
    server_kind: ServerKind, recorder: Recorder
) -> None:
    """Two requests, each handler waiting for its own client: both are inside handle() at
    once, in two threads, two forked children or two workers; never in the serving thread."""
    server = server_kind.server(LOOPBACK, recording_handler(server_kind, recorder), workers=2)
    with server_kind.serving(server) as loop:
        with (
            socket.create_connection(server.server_address, timeout=5) as first,
            socket.create_connection(server.server_address, timeout=5) as second,
        ):
            wait_until(lambda: recorder.texts().count("handle") == 2)
            for client in (first, second):
                client.sendall(b"both")
                client.shutdown(socket.SHUT_WR)
            replies = [recv_all(first), recv_all(second)]
    assert replies == [b"echo:both", b"echo:both"]
    handled_by = [(pid, ident) for pid, ident, text in recorder.entries() if text == "handle"]
    assert len(set(handled_by)) == 2
    assert recorder.where("handle", loop) == {server_kind.handler_place} != {"loop"}


# --- daemon_threads ----------------------------------------------------------------------


def test_daemon_threads_defaults_to_false(ss: Any) -> None:
    assert ss.ThreadingMixIn.daemon_threads is False
    assert ss.ThreadingTCPServer.daemon_threads is False


@pytest.mark.parametrize("daemon", [False, True])
def test_daemon_threads_sets_thread_daemon(ss: Any, daemon: bool) -> None:
    threads: list[threading.Thread] = []

    class Server(ss.ThreadingTCPServer):
        daemon_threads = daemon

    server = Server(LOOPBACK, _recording_handler(ss, threads))
    with serving(server, POLL):
        tcp_request(server.server_address)
    assert len(threads) == 1
    threads[0].join(WAIT)  # daemon threads are not joined by server_close()
    assert threads[0].daemon is daemon


# --- block_on_close ----------------------------------------------------------------------


def test_block_on_close_defaults_to_true(ss: Any) -> None:
    assert ss.ThreadingMixIn.block_on_close is True


@each_kind(
    stock=("thread",), skip={"sync": "its handler runs in the very loop shutdown() waits for"}
)
def test_stopping_lets_a_request_in_progress_finish(
    server_kind: ServerKind, recorder: Recorder
) -> None:
    """shutdown() then server_close() while a handler runs: the stop does not complete before
    the handler does (server_close() waits for request threads and children, block_on_close;
    a pool's shutdown() drains its workers), and the client gets its whole reply."""
    server = server_kind.server(
        LOOPBACK, recording_handler(server_kind, recorder), graceful_timeout=30.0
    )
    loop = threading.Thread(target=server.serve_forever, args=(POLL,), name="serve_forever")
    loop.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    stopper = threading.Thread(target=stop, name="stop")
    try:
        server_kind.wait_ready(server)
        with socket.create_connection(server.server_address, timeout=5) as client:
            client.sendall(b"half")
            wait_until(lambda: "handle" in recorder.texts())
            stopper.start()
            wait_until(lambda: server_kind.stopping(server))
            assert stopper.is_alive()  # the handler cannot end before the client's EOF
            client.sendall(b"-and-the-rest")
            client.shutdown(socket.SHUT_WR)
            reply = recv_all(client)
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        if stopper.ident is None:
            stop()
        stopper.join(10)
        loop.join(10)
        server.server_close()
    assert reply == b"echo:half-and-the-rest"
    assert recorder.texts().count("finish") == 1


def test_server_close_does_not_track_or_wait_for_threads_without_block_on_close(ss: Any) -> None:
    started, release = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    class Server(ss.ThreadingTCPServer):
        block_on_close = False

    server = Server(LOOPBACK, _blocking_handler(ss, threads, started, release))
    try:
        with socket.create_connection(server.server_address):
            server.handle_request()
            assert started.wait(WAIT)
            assert "_threads" not in vars(server)
            assert server._threads is ss.ThreadingMixIn._threads
            assert type(server._threads).__name__ == "_NoThreads"
            server.server_close()  # returns although the handler is blocked
            assert threads[0].is_alive()
    finally:
        release.set()
        if threads:
            threads[0].join(WAIT)
    assert not threads[0].is_alive()


def test_threads_are_reaped_over_sequential_requests(ss: Any) -> None:
    # CPython's test_threads_reaped (bpo-37193): not every thread is kept forever.
    server = ss.ThreadingTCPServer(LOOPBACK, ss.StreamRequestHandler)
    try:
        for _ in range(10):
            with socket.create_connection(server.server_address):
                server.handle_request()
        assert len(server._threads) < 10
    finally:
        server.server_close()


# --- errors in handler threads -----------------------------------------------------------


def test_system_exit_in_handler_reaches_threading_excepthook_after_shutdown_request(
    ss: Any,
) -> None:
    events: list[Any] = []
    hooked = threading.Event()

    class Handler(ss.BaseRequestHandler):
        def handle(self) -> None:
            raise SystemExit(3)

    class Server(ss.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            events.append("handle_error")

        def shutdown_request(self, request: Any) -> None:
            events.append("shutdown_request")
            super().shutdown_request(request)

    def excepthook(args: Any) -> None:
        events.append(("excepthook", args.exc_type, args.thread))
        hooked.set()

    with mock.patch.object(threading, "excepthook", excepthook):
        server = Server(LOOPBACK, Handler)
        try:
            with socket.create_connection(server.server_address):
                server.handle_request()
                assert hooked.wait(WAIT)
        finally:
            server.server_close()  # joins the handler thread while the hook is still patched
    assert len(events) == 2
    assert events[0] == "shutdown_request"
    hook_name, exc_type, thread = events[1]
    assert (hook_name, exc_type) == ("excepthook", SystemExit)
    assert thread is not threading.main_thread()


def test_handle_error_runs_in_the_handler_thread_for_an_exception(ss: Any) -> None:
    seen: dict[str, Any] = {}
    order: list[str] = []

    class Handler(ss.BaseRequestHandler):
        def handle(self) -> None:
            seen["handler_thread"] = threading.current_thread()
            raise ValueError("boom")

    class Server(ss.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            seen["error_thread"] = threading.current_thread()
            seen["exc_type"] = sys.exc_info()[0]
            order.append("handle_error")

        def shutdown_request(self, request: Any) -> None:
            order.append("shutdown_request")
            super().shutdown_request(request)

    server = Server(LOOPBACK, Handler)
    try:
        with socket.create_connection(server.server_address):
            server.handle_request()
    finally:
        server.server_close()  # joins the handler thread
    assert seen["error_thread"] is seen["handler_thread"]
    assert seen["error_thread"] is not threading.main_thread()
    assert seen["exc_type"] is ValueError
    assert order == ["handle_error", "shutdown_request"]


# --- sockherd-only: deliberate differences -----------------------------------------------


def test_close_timeout_defaults_to_none_so_server_close_waits_as_cpython() -> None:
    assert sockherd.ThreadingMixIn.close_timeout is None
    assert sockherd.ThreadingTCPServer.close_timeout is None


def test_close_timeout_leaves_a_stuck_handler_thread_behind_with_a_warning(
    caplog: Any,
) -> None:
    # Deliberate difference: CPython's server_close() would wait forever here.
    started, release = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    class Server(sockherd.ThreadingTCPServer):
        close_timeout = 0.2

    server = Server(LOOPBACK, _blocking_handler(sockherd, threads, started, release))
    try:
        with socket.create_connection(server.server_address):
            server.handle_request()
            assert started.wait(WAIT)
            with caplog.at_level(logging.WARNING, logger=MIXIN_LOGGER):
                began = monotonic()
                server.server_close()
                elapsed = monotonic() - began
            assert threads[0].is_alive()
    finally:
        release.set()
        if threads:
            threads[0].join(WAIT)
        server.server_close()  # idempotent; ensures the socket is closed on failure
    assert 0.19 <= elapsed < 2.0
    warnings = [
        record
        for record in caplog.records
        if record.name == MIXIN_LOGGER and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert threads[0].name in warnings[0].getMessage()


def _finished_thread() -> threading.Thread:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return thread


def test_threads_list_stays_bounded_over_many_finished_threads() -> None:
    threads = _Threads()
    longest = 0
    for _ in range(1000):
        threads.append(_finished_thread())
        longest = max(longest, len(threads))
    assert longest < 20


class _LiveThreadStub:
    """Looks like a running non-daemon thread to `_Threads`; counts `is_alive()` calls."""

    daemon = False

    def __init__(self, calls: list[int]) -> None:
        self._calls = calls

    def is_alive(self) -> bool:
        self._calls[0] += 1
        return True


def test_threads_pruning_work_is_linear_in_the_number_of_appends() -> None:
    # Deliberate difference: CPython's _Threads.append() scans every tracked thread,
    # 1000 live threads cost ~500,000 is_alive() calls; sockherd prunes only when the
    # list has doubled since the last prune.
    calls = [0]
    threads = _Threads()
    for _ in range(1000):
        threads.append(_LiveThreadStub(calls))
    assert len(threads) == 1000  # live threads are never dropped
    assert calls[0] < 3 * 1000
