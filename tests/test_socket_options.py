"""allow_reuse_address / allow_reuse_port become real socket options, as in CPython (both
modules observed with getsockopt), and SO_REUSEPORT is never set on AF_UNIX (gh-128916)."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

import sockherd


def options(sock: socket.socket) -> tuple[int, int]:
    reuse_port = (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        if hasattr(socket, "SO_REUSEPORT") and sock.family != socket.AF_UNIX
        else 0
    )
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)), bool(reuse_port)


@pytest.mark.parametrize("server_name", ["TCPServer", "UDPServer"])
@pytest.mark.parametrize(
    ("reuse_address", "reuse_port"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_reuse_attributes_set_the_socket_options(ss, server_name, reuse_address, reuse_port):
    cls = type(
        "S",
        (getattr(ss, server_name),),
        {"allow_reuse_address": reuse_address, "allow_reuse_port": reuse_port},
    )
    with cls(("127.0.0.1", 0), ss.BaseRequestHandler) as server:
        assert options(server.socket) == (
            reuse_address,
            reuse_port and hasattr(socket, "SO_REUSEPORT"),
        )


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
