"""A failed bind() names the address and a remedy, keeps its errno, and leaks nothing."""

from __future__ import annotations

import errno
import os
import socketserver
import tempfile

import pytest
from conftest import child_processes
from server_kinds import ServerKind, each_kind

import sockherd


@each_kind()
def test_port_in_use_says_which_port_and_what_to_do(server_kind: ServerKind) -> None:
    """At construction, before anything forks (a pool's workers included)."""
    with sockherd.TCPServer(("127.0.0.1", 0), sockherd.BaseRequestHandler) as first:
        port = first.server_address[1]
        with pytest.raises(sockherd.BindError) as caught:
            server_kind.server(("127.0.0.1", port), sockherd.BaseRequestHandler, workers=2)
        assert child_processes() == set()
    assert caught.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1 port {port}" in str(caught.value)
    assert "already in use" in str(caught.value)


def test_port_in_use_is_still_the_oserror_stock_code_catches():
    """Code written for CPython (`except OSError as e: if e.errno == EADDRINUSE`) still works."""
    with sockherd.TCPServer(("127.0.0.1", 0), sockherd.BaseRequestHandler) as first:
        address = first.server_address
        outcomes = []
        for module in (socketserver, sockherd):
            try:
                module.TCPServer(address, module.BaseRequestHandler)
            except OSError as error:
                outcomes.append((isinstance(error, OSError), error.errno))
    assert outcomes == [(True, errno.EADDRINUSE), (True, errno.EADDRINUSE)]


def test_address_not_on_this_machine_is_named():
    # 192.0.2.0/24 is TEST-NET-1: never assigned to this host; bind() fails locally, no traffic.
    with pytest.raises(sockherd.BindError) as caught:
        sockherd.TCPServer(("192.0.2.1", 0), sockherd.BaseRequestHandler)
    assert caught.value.errno == errno.EADDRNOTAVAIL
    assert "192.0.2.1" in str(caught.value) and "does not belong to this machine" in str(
        caught.value
    )


def test_unix_path_in_use_suggests_removing_a_stale_socket_file():
    directory = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(directory, "s.sock")
    try:
        with sockherd.UnixStreamServer(path, sockherd.BaseRequestHandler):
            with pytest.raises(sockherd.BindError) as caught:
                sockherd.UnixStreamServer(path, sockherd.BaseRequestHandler)
        assert caught.value.errno == errno.EADDRINUSE
        assert path in str(caught.value) and "stale socket file" in str(caught.value)
    finally:
        os.unlink(path)
        os.rmdir(directory)


def test_unix_path_in_missing_directory_is_explained():
    with pytest.raises(sockherd.BindError) as caught:
        sockherd.UnixStreamServer("/nonexistent-dir/s.sock", sockherd.BaseRequestHandler)
    assert caught.value.errno == errno.ENOENT
    assert "directory exists" in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind low ports")
def test_privileged_port_explains_the_permission():
    with pytest.raises(sockherd.BindError) as caught:
        sockherd.TCPServer(("127.0.0.1", 80), sockherd.BaseRequestHandler)
    assert "CAP_NET_BIND_SERVICE" in str(caught.value)


def test_failed_bind_closes_the_socket():
    with sockherd.TCPServer(("127.0.0.1", 0), sockherd.BaseRequestHandler) as first:
        fds_before = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc") else "/dev/fd"))
        for _ in range(50):
            with pytest.raises(OSError):
                sockherd.TCPServer(first.server_address, sockherd.BaseRequestHandler)
        fds_after = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc") else "/dev/fd"))
    assert fds_after == fds_before
