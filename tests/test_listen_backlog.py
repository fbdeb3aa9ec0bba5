"""The listen backlog: SOMAXCONN by default (CPython 3.15's choice); CPython 3.11-3.14 use 5."""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import socketserver
import struct
import sys
import time

import pytest

import sockherd

MODULES = {"socketserver": socketserver, "sockherd": sockherd}
BURST = 64


def kernel_listen_backlog(sock: socket.socket) -> int:
    """The backlog the kernel applies to a listening socket (Linux TCP_INFO: tcpi_sacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 28)[0]


def effective_somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as limit:
            return min(socket.SOMAXCONN, int(limit.read()))
    except OSError:
        return socket.SOMAXCONN


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO layout is Linux's")
@pytest.mark.parametrize("module", MODULES)
def test_listen_uses_request_queue_size(module):
    with MODULES[module].TCPServer(("127.0.0.1", 0), sockherd.BaseRequestHandler) as server:
        backlog = kernel_listen_backlog(server.socket)
    expected = 5 if module == "socketserver" else effective_somaxconn()
    assert backlog == expected


def test_request_queue_size_can_still_be_set_per_class():
    class Small(sockherd.TCPServer):
        request_queue_size = 3

    with Small(("127.0.0.1", 0), sockherd.BaseRequestHandler) as server:
        if sys.platform.startswith("linux"):
            assert kernel_listen_backlog(server.socket) == 3
        assert server.request_queue_size == 3


def connect_burst(address, count, within):
    """Start `count` non-blocking connects; return how many completed within `within` s."""
    clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    connected = 0
    try:
        with selectors.DefaultSelector() as selector:
            for client in clients:
                client.setblocking(False)
                code = client.connect_ex(address)
                assert code in (0, errno.EINPROGRESS)
                selector.register(client, selectors.EVENT_WRITE)
            deadline = time.monotonic() + within
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for key, _ in selector.select(remaining):
                    selector.unregister(key.fileobj)
                    if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        connected += 1
        return connected, clients
    except BaseException:
        for client in clients:
            client.close()
        raise


def accept_all(server) -> int:
    server.socket.setblocking(False)
    accepted = 0
    while True:
        try:
            connection, _ = server.socket.accept()
        except BlockingIOError:
            return accepted
        connection.close()
        accepted += 1


@pytest.mark.parametrize("module", MODULES)
def test_burst_of_64_connects_is_queued_without_syn_retries(module):
    """64 clients connect to a busy server (not accepting yet) within 0.7 s, before the
    kernel's 1 s SYN retransmission: with a backlog of 5 most of them are dropped."""
    with MODULES[module].TCPServer(("127.0.0.1", 0), sockherd.BaseRequestHandler) as server:
        connected, clients = connect_burst(server.server_address, BURST, within=0.7)
        try:
            queued = accept_all(server)
        finally:
            for client in clients:
                with contextlib.suppress(OSError):
                    client.close()
    print(f"\n{module}: {connected}/{BURST} connects completed in 0.7 s, {queued} queued")
    if module == "sockherd":
        assert connected == BURST and queued == BURST
    else:
        assert queued <= 6 and connected < BURST
