"""Request handlers, run differentially against stock socketserver and sockherd.

The BaseRequestHandler tests instantiate handlers directly or call `handle_request()`
inline (`ss`).  The stream, datagram and Unix-domain tests run on every server kind
(`server_kind`, server_kinds.py) and on CPython's synchronous servers: the handler may
run in a thread, a forked child or a pool's worker, so it reports what it saw in its
reply, and the client checks it.
"""

from __future__ import annotations

import array
import ast
import contextlib
import errno
import io
import os
import select
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import tcp_request, wait_until
from server_kinds import Recorder, ServerKind, each_kind, recv_all

import sockherd

HOST = "127.0.0.1"
TIMEOUT = 5.0
HAS_UNIX = hasattr(socket, "AF_UNIX")
needs_unix = pytest.mark.skipif(not HAS_UNIX, reason="no AF_UNIX")
NO_RCVTIMEO = bytes(16)  # struct timeval {0, 0}


def serve_one(kind: ServerKind, handler: type, payload: bytes = b"") -> bytes:
    """Serve one TCP request with `handler` on a server of `kind`; return the reply."""
    server = kind.server((HOST, 0), handler)
    with kind.serving(server):
        return tcp_request(server.server_address, payload)


def reply_with(handler: Any, seen: Any) -> None:
    """Send what the handler saw back to the client, repr()-encoded."""
    handler.connection.sendall(repr(seen).encode())


def seen_in(reply: bytes) -> Any:
    return ast.literal_eval(reply.decode())


@contextlib.contextmanager
def udp_serving(kind: ServerKind, handler: type, **settings: Any) -> Iterator[tuple]:
    """A serving UDP server of `kind` and a client socket aimed at it."""
    server = kind.server((HOST, 0), handler, transport="UDP", **settings)
    with kind.serving(server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            yield server, client


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for Unix socket files whose paths stay well under the 108-byte limit."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    directory = tempfile.mkdtemp(prefix="sh-", dir="/tmp")
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- BaseRequestHandler ----------------------------------------------------------------


def _recording_handler(ss, fail_in: str | None = None):
    class Recording(ss.BaseRequestHandler):
        calls: list[str] = []

        def _step(self, name):
            self.calls.append(name)
            if name == fail_in:
                raise ValueError(name)

        def setup(self):
            self._step("setup")

        def handle(self):
            self._step("handle")

        def finish(self):
            self._step("finish")

    return Recording


def test_base_handler_calls_setup_handle_finish_in_order(ss):
    handler_class = _recording_handler(ss)
    handler = handler_class("request", ("client", 1), "server")
    assert handler_class.calls == ["setup", "handle", "finish"]
    assert (handler.request, handler.client_address, handler.server) == (
        "request",
        ("client", 1),
        "server",
    )


def test_base_handler_runs_finish_when_handle_raises(ss):
    handler_class = _recording_handler(ss, fail_in="handle")
    with pytest.raises(ValueError, match="handle"):
        handler_class("request", ("client", 1), "server")
    assert handler_class.calls == ["setup", "handle", "finish"]


def test_base_handler_skips_handle_and_finish_when_setup_raises(ss):
    handler_class = _recording_handler(ss, fail_in="setup")
    with pytest.raises(ValueError, match="setup"):
        handler_class("request", ("client", 1), "server")
    assert handler_class.calls == ["setup"]


def test_base_handler_exception_reaches_server_handle_error_after_finish(ss):
    handler_class = _recording_handler(ss, fail_in="handle")
    errors = []

    class Server(ss.TCPServer):
        def handle_error(self, request, client_address):
            errors.append((handler_class.calls[:], client_address))

    with Server((HOST, 0), handler_class) as server:
        server.timeout = TIMEOUT  # handle_request() gives up instead of hanging
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            server.handle_request()
            assert errors == [(["setup", "handle", "finish"], client.getsockname())]


# --- StreamRequestHandler --------------------------------------------------------------


@each_kind(stock=("sync",))
def test_stream_wfile_is_the_unbuffered_socket_writer_of_the_connection(
    server_kind: ServerKind,
) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
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

    reply = serve_one(server_kind, Handler)
    assert seen_in(reply) == ("_SocketWriter", True, True, True, True)


@each_kind(stock=("sync",))
def test_stream_wfile_write_returns_the_byte_count_of_a_non_byte_buffer(
    server_kind: ServerKind,
) -> None:
    payload = array.array("i", [1, 2, 3, 4])

    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            written = self.wfile.write(payload)
            self.wfile.write(b"|%d" % written)

    expected = payload.tobytes() + b"|%d" % (payload.itemsize * len(payload))
    assert serve_one(server_kind, Handler) == expected


@each_kind(stock=("sync",))
def test_stream_wfile_write_sends_a_large_payload_in_full(server_kind: ServerKind) -> None:
    payload = os.urandom(1024) * 4096  # 4 MiB, far more than the socket buffers hold

    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            written = self.wfile.write(payload)
            self.wfile.write(b"|%d" % written)

    assert serve_one(server_kind, Handler) == payload + b"|%d" % len(payload)


@each_kind(stock=("sync",))
def test_stream_wfile_sends_without_flush(server_kind: ServerKind, recorder: Recorder) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.wfile.write(b"hello")
            recorder.add("written")
            self.rfile.readline()  # hold the handler (and finish()) until the client says so

    server = server_kind.server((HOST, 0), Handler)
    with server_kind.serving(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            wait_until(lambda: "written" in recorder.texts())
            arrived_before_finish = client.recv(5)
            client.sendall(b"go\n")
            assert recv_all(client) == b""
    assert arrived_before_finish == b"hello"


@each_kind(stock=("sync",))
def test_stream_wbufsize_minus_one_buffers_until_finish(
    server_kind: ServerKind, recorder: Recorder
) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        wbufsize = -1

        def handle(self) -> None:
            self.wfile.write(b"buffered")
            recorder.add(f"written {type(self.wfile).__name__}")
            self.rfile.readline()  # hold the handler until the client has looked

    server = server_kind.server((HOST, 0), Handler)
    with server_kind.serving(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            wait_until(lambda: any(t.startswith("written") for t in recorder.texts()))
            # Unbuffered, the bytes would already be in the client's receive queue.
            sent_before_finish = bool(select.select([client], [], [], 0.1)[0])
            client.sendall(b"go\n")
            sent_by_finish = bool(select.select([client], [], [], TIMEOUT)[0])
            received = recv_all(client)
    assert recorder.texts() == ["written BufferedWriter"]
    assert (sent_before_finish, sent_by_finish) == (False, True)
    assert received == b"buffered"


@each_kind(stock=("sync",))
def test_stream_rfile_is_buffered_by_default(server_kind: ServerKind) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            reply_with(self, (type(self.rfile).__name__, self.rfile.readline()))

    reply = serve_one(server_kind, Handler, b"line\nrest")
    assert seen_in(reply) == ("BufferedReader", b"line\n")


@each_kind(stock=("sync",))
def test_stream_rbufsize_zero_gives_a_raw_reader(server_kind: ServerKind) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
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

    reply = serve_one(server_kind, Handler, b"data")
    assert seen_in(reply) == (True, True, b"data")


@each_kind(stock=("sync",))
def test_stream_finish_closes_the_files_but_not_the_connection(server_kind: ServerKind) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        def finish(self) -> None:
            super().finish()
            reply_with(self, (self.rfile.closed, self.wfile.closed, self.connection.fileno() != -1))

    assert seen_in(serve_one(server_kind, Handler)) == (True, True, True)


@each_kind(stock=("sync",))
def test_stream_timeout_attribute_times_out_a_silent_client(server_kind: ServerKind) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        timeout = 0.1

        def handle(self) -> None:
            try:
                outcome: Any = self.rfile.readline()
            except TimeoutError as error:  # socket.timeout is an alias since 3.10
                outcome = type(error).__name__
            reply_with(self, (self.connection.gettimeout(), outcome))

    server = server_kind.server((HOST, 0), Handler)
    with server_kind.serving(server):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            reply = recv_all(client)  # sends nothing, never half-closes
    assert seen_in(reply) == (0.1, "TimeoutError")


@each_kind(stock=("sync",))
def test_stream_connection_has_no_timeout_by_default(server_kind: ServerKind) -> None:
    """Neither a Python timeout nor a receive timeout (SO_RCVTIMEO: a prefork listener's
    heartbeat timeout in accept mode must not reach the connections it accepts)."""

    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            rcvtimeo = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
            reply_with(self, (self.connection.gettimeout(), rcvtimeo))

    reply = serve_one(server_kind, Handler)
    assert seen_in(reply) == (socket.getdefaulttimeout(), NO_RCVTIMEO)


@each_kind(stock=("sync",))
def test_stream_disable_nagle_algorithm_sets_tcp_nodelay(server_kind: ServerKind) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        disable_nagle_algorithm = True

        def handle(self) -> None:
            reply_with(self, self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    assert int(serve_one(server_kind, Handler)) != 0


@each_kind(stock=("sync",))
def test_stream_nagle_algorithm_stays_enabled_by_default(server_kind: ServerKind) -> None:
    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            reply_with(self, self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    assert int(serve_one(server_kind, Handler)) == 0


# --- DatagramRequestHandler and UDP servers ----------------------------------------------


@each_kind(stock=("sync",))
def test_datagram_handler_files_are_bytesio_over_the_packet(server_kind: ServerKind) -> None:
    class Handler(server_kind.module.DatagramRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            seen = (type(self.rfile).__name__, type(self.wfile).__name__, self.packet)
            self.wfile.write(repr((*seen, self.rfile.read())).encode())

    with udp_serving(server_kind, Handler) as (server, client):
        client.sendto(b"datagram", server.server_address)
        reply = client.recv(1000)
    assert seen_in(reply) == ("BytesIO", "BytesIO", b"datagram", b"datagram")


@each_kind(stock=("sync",))  # a pool's workers read datagrams themselves in either hand-off
def test_datagram_handler_replies_through_the_shared_server_socket(
    server_kind: ServerKind,
) -> None:
    class Handler(server_kind.module.DatagramRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            shared = self.socket is self.server.socket
            self.wfile.write(self.rfile.read().upper() + (b" shared" if shared else b" copy"))

    with udp_serving(server_kind, Handler, workers=2) as (server, client):
        client.sendto(b"ping", server.server_address)
        assert client.recvfrom(100) == (b"PING shared", server.server_address)
        client.sendto(b"again", server.server_address)
        assert client.recvfrom(100) == (b"AGAIN shared", server.server_address)
        assert server.socket.fileno() != -1  # no request's "close" closed it


@each_kind(stock=("sync",))
def test_datagram_handler_sends_an_empty_reply_when_nothing_was_written(
    server_kind: ServerKind,
) -> None:
    with udp_serving(server_kind, server_kind.module.DatagramRequestHandler) as (server, client):
        client.sendto(b"ping", server.server_address)
        assert client.recvfrom(100) == (b"", server.server_address)


@each_kind(stock=("sync",))
def test_udp_server_truncates_datagrams_to_max_packet_size(server_kind: ServerKind) -> None:
    class Handler(server_kind.module.DatagramRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.wfile.write(b"%d" % len(self.packet))

    with udp_serving(server_kind, Handler) as (server, client):
        client.sendto(b"x" * 10000, server.server_address)
        assert client.recv(100) == b"8192"


# --- Unix-domain servers ---------------------------------------------------------------


@needs_unix
@each_kind(stock=("sync",))
def test_unix_datagram_server_replies_to_a_bound_client(
    server_kind: ServerKind, short_dir: Path
) -> None:
    server_path = str(short_dir / "server.sock")
    client_path = str(short_dir / "client.sock")

    class Handler(server_kind.module.DatagramRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper() + b" " + self.client_address.encode())

    server = server_kind.server(server_path, Handler, transport="UnixDatagram")
    assert server.server_address == server_path
    with server_kind.serving(server):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.bind(client_path)
            client.sendto(b"ping", server_path)
            assert client.recvfrom(200) == (b"PING " + client_path.encode(), server_path)


@needs_unix
@each_kind(stock=("sync",))
def test_unix_stream_server_serves_at_its_socket_path(
    server_kind: ServerKind, short_dir: Path
) -> None:
    path = str(short_dir / "stream.sock")

    class Handler(server_kind.module.StreamRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline().upper())

    server = server_kind.server(path, Handler, transport="UnixStream")
    assert server.server_address == path
    with server_kind.serving(server):
        for line in (b"ping\n", b"pong\n"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(TIMEOUT)
                client.connect(path)
                client.sendall(line)
                assert recv_all(client) == line.upper()


@needs_unix
@each_kind(stock=("sync",))
def test_unix_stream_server_close_leaves_the_socket_file(
    server_kind: ServerKind, short_dir: Path
) -> None:
    path = str(short_dir / "stream.sock")
    server = server_kind.server(
        path, server_kind.module.StreamRequestHandler, transport="UnixStream"
    )
    server.server_close()
    assert server.socket.fileno() == -1
    assert Path(path).is_socket()


@needs_unix
@each_kind(stock=("sync",))
def test_unix_stream_server_cannot_bind_over_a_leftover_socket_file(
    server_kind: ServerKind, short_dir: Path
) -> None:
    """EADDRINUSE, as stock raises it; sockherd's is a BindError (an OSError) that says so."""
    path = str(short_dir / "stream.sock")
    handler = server_kind.module.StreamRequestHandler
    server_kind.server(path, handler, transport="UnixStream").server_close()
    with pytest.raises(OSError if server_kind.stock else sockherd.BindError) as caught:
        server_kind.server(path, handler, transport="UnixStream")
    assert caught.value.errno == errno.EADDRINUSE
