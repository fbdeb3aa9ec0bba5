"""allow_reuse_address / allow_reuse_port become real socket options, as in CPython (both
modules observed with getsockopt), on every server kind, and SO_REUSEPORT is never set on
AF_UNIX (gh-128916).  Port 0 becomes the bound port, which the handler sees too, wherever
it runs."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
from conftest import tcp_request
from server_kinds import ServerKind, each_kind

import sockherd

LOOPBACK = ("127.0.0.1", 0)


def options(sock: socket.socket) -> tuple[int, int]:
    reuse_port = (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        if hasattr(socket, "SO_REUSEPORT") and sock.family != socket.AF_UNIX
        else 0
    )
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)), bool(reuse_port)


@pytest.mark.parametrize("transport", ["TCP", "UDP"])
@pytest.mark.parametrize(
    ("reuse_address", "reuse_port"), [(False, False), (True, False), (False, True), (True, True)]
)
@each_kind(stock=("sync",))
def test_reuse_attributes_set_the_socket_options(
    server_kind: ServerKind, transport: str, reuse_address: bool, reuse_port: bool
) -> None:
    cls = type(
        "S",
        (server_kind.server_class(transport),),
        {"allow_reuse_address": reuse_address, "allow_reuse_port": reuse_port},
    )
    with server_kind.server(LOOPBACK, server_kind.module.BaseRequestHandler, cls=cls) as server:
        assert options(server.socket) == (
            reuse_address,
            reuse_port and hasattr(socket, "SO_REUSEPORT"),
        )


@pytest.mark.parametrize("transport", ["TCP", "UDP"])
@each_kind(stock=("sync",))
def test_port_0_becomes_the_bound_port_in_the_server_and_where_the_handler_runs(
    server_kind: ServerKind, transport: str
) -> None:
    module = server_kind.module
    stream = transport == "TCP"

    class Handler(module.StreamRequestHandler if stream else module.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(repr(self.server.server_address).encode())

    server = server_kind.server(LOOPBACK, Handler, transport=transport)
    assert server.server_address == server.socket.getsockname()
    assert server.server_address[1] != 0
    with server_kind.serving(server):
        if stream:
            reply = tcp_request(server.server_address, b"")
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(5)
                client.sendto(b"port?", server.server_address)
                reply = client.recv(100)
    assert reply == repr(server.server_address).encode()


def test_reuse_attributes_are_read_at_bind_time(ss):
    server = ss.TCPServer(("127.0.0.1", 0), ss.BaseRequestHandler, bind_and_activate=False)
    try:
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        assert options(server.socket)[0] is True
    finally:
        server.server_close()


def test_two_servers_share_a_port_only_with_allow_reuse_port():
    class Shared(sockherd.TCPServer):
        allow_reuse_port = True

    with Shared(("127.0.0.1", 0), sockherd.BaseRequestHandler) as first:
        with Shared(first.server_address, sockherd.BaseRequestHandler) as second:
            assert second.server_address == first.server_address
        with pytest.raises(OSError):
            sockherd.TCPServer(first.server_address, sockherd.BaseRequestHandler)


def test_allow_reuse_port_is_ignored_for_unix_sockets():
    class UnixReusing(sockherd.UnixStreamServer):
        allow_reuse_port = True

    directory = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(directory, "s.sock")
    try:
        with UnixReusing(path, sockherd.BaseRequestHandler) as server:
            assert server.server_address == path
    finally:
        os.unlink(path)
        os.rmdir(directory)
