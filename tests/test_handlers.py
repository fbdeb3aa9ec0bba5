"""Request handlers, run differentially against stock socketserver and sockherd (`ss`).

Most tests connect a client first and then call `handle_request()` inline, so the
handler runs in the test's own thread and can look at the client socket directly.
"""

from __future__ import annotations

import array
import contextlib
import errno
import io
import os
import select
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"
TIMEOUT = 5.0
HAS_UNIX = hasattr(socket, "AF_UNIX")
needs_unix = pytest.mark.skipif(not HAS_UNIX, reason="no AF_UNIX")


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


@contextlib.contextmanager
def tcp_pair(ss, handler_class) -> Iterator[tuple[object, socket.socket]]:
    """A TCPServer and a client already connected to it (not yet accepted)."""
    with ss.TCPServer((HOST, 0), handler_class) as server:
        server.timeout = TIMEOUT  # handle_request() gives up instead of hanging
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            yield server, client


@contextlib.contextmanager
def udp_pair(ss, handler_class) -> Iterator[tuple[object, socket.socket]]:
    """A UDPServer and a client socket aimed at it."""
    with ss.UDPServer((HOST, 0), handler_class) as server:
        server.timeout = TIMEOUT
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
        server.timeout = TIMEOUT
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            server.handle_request()
            assert errors == [(["setup", "handle", "finish"], client.getsockname())]


# --- StreamRequestHandler --------------------------------------------------------------


def test_stream_wfile_is_writable_buffered_io_socket_writer(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            seen["type"] = type(self.wfile).__name__
            seen["buffered_io"] = isinstance(self.wfile, io.BufferedIOBase)
            seen["writable"] = self.wfile.writable()

    with tcp_pair(ss, Handler) as (server, _client):
        server.handle_request()
    assert seen == {"type": "_SocketWriter", "buffered_io": True, "writable": True}


def test_stream_wfile_fileno_is_the_connection_fileno(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            seen["wfile"] = self.wfile.fileno()
            seen["request"] = self.request.fileno()
            seen["connection_is_request"] = self.connection is self.request

    with tcp_pair(ss, Handler) as (server, _client):
        server.handle_request()
    assert seen["wfile"] == seen["request"] != -1
    assert seen["connection_is_request"]


def test_stream_wfile_write_returns_byte_count_of_non_byte_buffer(ss):
    payload = array.array("i", [1, 2, 3, 4])
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            seen["returned"] = self.wfile.write(payload)

    with tcp_pair(ss, Handler) as (server, client):
        server.handle_request()
        received = recv_all(client)
    assert seen["returned"] == payload.itemsize * len(payload) == len(received)
    assert received == payload.tobytes()


def test_stream_wfile_write_sends_large_payload_in_full(ss):
    payload = os.urandom(1024) * 4096  # 4 MiB, far more than the socket buffers hold
    seen = {}
    received = []

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            seen["returned"] = self.wfile.write(payload)

    with tcp_pair(ss, Handler) as (server, client):
        reader = threading.Thread(target=lambda: received.append(recv_all(client)))
        reader.start()
        try:
            server.handle_request()
        finally:
            reader.join(TIMEOUT * 2)
    assert seen["returned"] == len(payload)
    assert received == [payload]


def test_stream_wfile_sends_without_flush(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"hello")
            seen["arrived_before_finish"] = readable(client, TIMEOUT) and client.recv(5)

    with tcp_pair(ss, Handler) as (server, client):
        server.handle_request()
    assert seen["arrived_before_finish"] == b"hello"


def test_stream_rfile_is_buffered_by_default(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            seen["rfile"] = type(self.rfile)
            seen["line"] = self.rfile.readline()

    with tcp_pair(ss, Handler) as (server, client):
        client.sendall(b"line\nrest")
        server.handle_request()
    assert seen == {"rfile": io.BufferedReader, "line": b"line\n"}


def test_stream_rbufsize_zero_gives_raw_reader(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        rbufsize = 0

        def handle(self):
            seen["raw"] = isinstance(self.rfile, io.RawIOBase)
            seen["socket_io"] = isinstance(self.rfile, socket.SocketIO)
            seen["data"] = self.rfile.read(4)

    with tcp_pair(ss, Handler) as (server, client):
        client.sendall(b"data")
        server.handle_request()
    assert seen == {"raw": True, "socket_io": True, "data": b"data"}


def test_stream_wbufsize_minus_one_buffers_until_finish(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        wbufsize = -1

        def handle(self):
            seen["wfile"] = type(self.wfile)
            self.wfile.write(b"buffered")
            seen["sent_before_finish"] = readable(client, 0)

        def finish(self):
            super().finish()
            seen["sent_by_finish"] = readable(client, TIMEOUT)

    with tcp_pair(ss, Handler) as (server, client):
        server.handle_request()
        received = recv_all(client)
    assert seen == {
        "wfile": io.BufferedWriter,
        "sent_before_finish": False,
        "sent_by_finish": True,
    }
    assert received == b"buffered"


def test_stream_finish_closes_files_but_not_the_connection(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def finish(self):
            super().finish()
            seen["files_closed"] = (self.rfile.closed, self.wfile.closed)
            seen["connection_open"] = self.connection.fileno() != -1

    with tcp_pair(ss, Handler) as (server, _client):
        server.handle_request()
    assert seen == {"files_closed": (True, True), "connection_open": True}


def test_stream_timeout_attribute_times_out_a_silent_client(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        timeout = 0.1

        def handle(self):
            seen["timeout"] = self.connection.gettimeout()
            try:
                seen["line"] = self.rfile.readline()
            except TimeoutError as error:  # socket.timeout is an alias since 3.10
                seen["error"] = type(error)

    with tcp_pair(ss, Handler) as (server, client):
        # Without the timeout the handler would wait forever: end its wait with EOF instead.
        watchdog = threading.Timer(TIMEOUT, client.shutdown, args=(socket.SHUT_WR,))
        watchdog.start()
        try:
            server.handle_request()
        finally:
            watchdog.cancel()
            watchdog.join()
    assert seen == {"timeout": 0.1, "error": socket.timeout}


def test_stream_connection_has_no_timeout_by_default(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            seen["timeout"] = self.connection.gettimeout()

    with tcp_pair(ss, Handler) as (server, _client):
        server.handle_request()
    assert seen == {"timeout": socket.getdefaulttimeout()}


def test_stream_disable_nagle_algorithm_sets_tcp_nodelay(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        disable_nagle_algorithm = True

        def handle(self):
            seen["nodelay"] = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    with tcp_pair(ss, Handler) as (server, _client):
        server.handle_request()
    assert seen["nodelay"] != 0


def test_stream_nagle_algorithm_stays_enabled_by_default(ss):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            seen["nodelay"] = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    with tcp_pair(ss, Handler) as (server, _client):
        server.handle_request()
    assert seen["nodelay"] == 0


# --- DatagramRequestHandler and UDPServer ----------------------------------------------


def test_datagram_handler_files_are_bytesio_over_the_packet(ss):
    seen = {}

    class Handler(ss.DatagramRequestHandler):
        def handle(self):
            seen["types"] = (type(self.rfile), type(self.wfile))
            seen["packet"] = (self.packet, self.rfile.read())

    with udp_pair(ss, Handler) as (server, client):
        client.sendto(b"datagram", server.server_address)
        server.handle_request()
    assert seen == {"types": (io.BytesIO, io.BytesIO), "packet": (b"datagram", b"datagram")}


def test_datagram_handler_replies_through_the_shared_server_socket(ss):
    seen = {}

    class Handler(ss.DatagramRequestHandler):
        def handle(self):
            seen["shared_socket"] = self.socket is self.server.socket
            self.wfile.write(self.rfile.read().upper())

    with udp_pair(ss, Handler) as (server, client):
        client.sendto(b"ping", server.server_address)
        server.handle_request()
        reply = client.recvfrom(100)
        assert reply == (b"PING", server.server_address)
        assert server.socket.fileno() != -1  # the request's "close" left it open
    assert seen == {"shared_socket": True}


def test_datagram_handler_sends_empty_reply_when_nothing_written(ss):
    with udp_pair(ss, ss.DatagramRequestHandler) as (server, client):
        client.sendto(b"ping", server.server_address)
        server.handle_request()
        assert client.recvfrom(100) == (b"", server.server_address)


def test_udp_server_truncates_datagrams_to_max_packet_size(ss):
    seen = {}

    class Handler(ss.DatagramRequestHandler):
        def handle(self):
            seen["length"] = len(self.packet)

    with udp_pair(ss, Handler) as (server, client):
        client.sendto(b"x" * 10000, server.server_address)
        server.handle_request()
    assert seen == {"length": 8192}


# --- Unix-domain servers ---------------------------------------------------------------


@needs_unix
def test_unix_datagram_server_replies_to_bound_client(ss, short_dir):
    server_path = str(short_dir / "server.sock")
    client_path = str(short_dir / "client.sock")
    seen = {}

    class Handler(ss.DatagramRequestHandler):
        def handle(self):
            seen["client_address"] = self.client_address
            self.wfile.write(self.rfile.read().upper())

    try:
        with ss.UnixDatagramServer(server_path, Handler) as server:
            server.timeout = TIMEOUT
            assert server.server_address == server_path
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                client.settimeout(TIMEOUT)
                client.bind(client_path)
                client.sendto(b"ping", server_path)
                server.handle_request()
                assert client.recvfrom(100) == (b"PING", server_path)
    finally:
        for path in (server_path, client_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    assert seen == {"client_address": client_path}


@needs_unix
def test_unix_stream_server_address_is_the_socket_path(ss, short_dir):
    path = str(short_dir / "stream.sock")

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline().upper())

    try:
        with ss.UnixStreamServer(path, Handler) as server:
            server.timeout = TIMEOUT
            assert server.server_address == path
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(TIMEOUT)
                client.connect(path)
                client.sendall(b"ping\n")
                server.handle_request()
                assert recv_all(client) == b"PING\n"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@needs_unix
def test_unix_stream_server_close_leaves_the_socket_file(ss, short_dir):
    path = str(short_dir / "stream.sock")
    try:
        server = ss.UnixStreamServer(path, ss.StreamRequestHandler)
        server.server_close()
        assert server.socket.fileno() == -1
        assert Path(path).is_socket()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@needs_unix
def test_unix_stream_server_cannot_bind_over_a_leftover_socket_file(ss, short_dir):
    path = str(short_dir / "stream.sock")
    try:
        ss.UnixStreamServer(path, ss.StreamRequestHandler).server_close()
        with pytest.raises(OSError) as caught:
            ss.UnixStreamServer(path, ss.StreamRequestHandler)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
