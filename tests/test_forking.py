"""ForkingMixIn: one child per request, reaped as soon as it exits, statuses kept.

Differential tests run against CPython's socketserver and sockherd (`ss`);
the sockherd-only ones test its deliberate improvements.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest
from conftest import serving, tcp_request, wait_until, zombie_children

import sockherd
from sockherd.examples.echo import EchoHandler
from sockherd.server import child_watch, forking

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def pipe():
    """A pipe whose two fds are closed at the end of the block."""
    read_fd, write_fd = os.pipe()
    try:
        yield read_fd, write_fd
    finally:
        for fd in (read_fd, write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class GatedHandler(sockherd.BaseRequestHandler):
    """Writes a byte to the server's `started_fd`, then waits for a byte on its `release_fd`."""

    def handle(self):
        os.write(self.server.started_fd, b"s")
        os.read(self.server.release_fd, 1)


def forking_server(ss, handler=EchoHandler, **attributes):
    cls = type("Server", (ss.ForkingTCPServer,), attributes)
    return cls(("127.0.0.1", 0), handler)


def is_zombie_or_gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- documented semantics, both modules ----------------------------------------------


def test_active_children_holds_the_pids_of_running_children(ss):
    with pipe() as (started_r, started_w), pipe() as (release_r, release_w):
        server = forking_server(ss, GatedHandler, started_fd=started_w, release_fd=release_r)
        with serving(server, poll_interval=0.05):
            client = socket.create_connection(server.server_address)
            os.read(started_r, 1)
            children = set(server.active_children)
            assert len(children) == 1
            assert psutil.Process().children()[0].pid in children
            os.write(release_w, b"r")
            client.close()
            wait_until(lambda: not server.active_children)


def test_parent_closes_its_copy_of_the_connection(ss):
    """The client sees EOF when the child is done, so the parent holds no copy open."""
    server = forking_server(ss)
    with serving(server, poll_interval=0.05):
        assert tcp_request(server.server_address, b"hello\n") == b"hello\n"


def test_handler_state_is_not_shared_back_to_the_parent(ss):
    class Mutating(sockherd.StreamRequestHandler):
        def handle(self):
            self.server.touched = True
            self.wfile.write(b"done")

    server = forking_server(ss, Mutating, touched=False)
    with serving(server, poll_interval=0.05):
        assert tcp_request(server.server_address) == b"done"
        assert server.touched is False


def test_handle_error_runs_in_the_child(ss, capfd):
    class Failing(sockherd.BaseRequestHandler):
        def handle(self):
            raise ValueError(f"boom in {os.getpid()}")

    server = forking_server(ss, Failing)
    with serving(server, poll_interval=0.05):
        tcp_request(server.server_address)
        wait_until(lambda: not server.active_children)
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request from" in err
    child_pid = int(err.split("ValueError: boom in ")[1].split()[0])
    assert child_pid != os.getpid()


def test_server_close_waits_for_running_children(ss):
    with pipe() as (started_r, started_w), pipe() as (release_r, release_w):
        server = forking_server(ss, GatedHandler, started_fd=started_w, release_fd=release_r)
        loop = threading.Thread(target=server.serve_forever, args=(0.05,))
        loop.start()
        client = socket.create_connection(server.server_address)
        os.read(started_r, 1)
        server.shutdown()
        loop.join()
        closed = threading.Event()
        closer = threading.Thread(target=lambda: (server.server_close(), closed.set()))
        closer.start()
        assert not closed.wait(0.2), "server_close() returned while a child was still running"
        os.write(release_w, b"r")
        closer.join(5)
        assert closed.is_set()
        assert not server.active_children
        client.close()


def test_max_children_holds_back_the_next_request_until_a_child_exits(ss):
    with pipe() as (started_r, started_w), pipe() as (release_r, release_w):
        server = forking_server(
            ss, GatedHandler, started_fd=started_w, release_fd=release_r, max_children=2
        )
        with serving(server, poll_interval=0.05):
            clients = [socket.create_connection(server.server_address) for _ in range(3)]
            os.read(started_r, 1)
            os.read(started_r, 1)
            wait_until(lambda: len(server.active_children or ()) == 2)
            os.set_blocking(started_r, False)
            with pytest.raises(BlockingIOError):
                os.read(started_r, 1)  # the third handler has not started
            os.set_blocking(started_r, True)
            os.write(release_w, b"r")
            assert os.read(started_r, 1) == b"s"  # now it has
            os.write(release_w, b"rr")
            wait_until(lambda: not server.active_children)
            for client in clients:
                client.close()


def test_collect_children_never_reaps_a_child_it_did_not_fork(ss):
    """CPython's Issue 1540386 check: a foreign child's status stays available to its owner."""
    foreign = os.fork()
    if foreign == 0:
        os._exit(72)
    try:
        server = forking_server(ss)
        with serving(server, poll_interval=0.05):
            for _ in range(3):
                assert tcp_request(server.server_address) == b"ping\n"
            wait_until(lambda: not server.active_children)
    finally:
        pid, status = os.waitpid(foreign, 0)
    assert pid == foreign and os.WEXITSTATUS(status) == 72


# --- sockherd: prompt reaping ----------------------------------------------------------


def test_no_zombie_outlives_one_loop_iteration_under_a_burst_of_200_requests():
    """At the end of every loop iteration, no zombie seen at the previous end is still there.

    poll_interval is 10 s, so CPython would leave the last children as zombies
    for up to 10 s; sockherd's loop wakes on each child's exit.
    """
    violations = []
    iterations = []

    class Watched(sockherd.ForkingTCPServer):
        previous: set[int] = set()

        def service_actions(self):
            super().service_actions()
            now = set(zombie_children())
            if self.previous & now:
                violations.append(sorted(self.previous & now))
            self.previous = now
            iterations.append(len(now))

    server = Watched(("127.0.0.1", 0), EchoHandler)
    replies = []

    def client(count):
        for index in range(count):
            replies.append(tcp_request(server.server_address, b"%d\n" % index))

    with serving(server, poll_interval=10):
        clients = [threading.Thread(target=client, args=(25,)) for _ in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert len(replies) == 200
        wait_until(lambda: not server.active_children, timeout=3)
        assert zombie_children() == []
    assert violations == []
    assert server.child_exit_counts == {"exit 0": 200}
    print(
        f"\n200 requests: {len(iterations)} loop iterations, "
        f"at most {max(iterations)} zombie(s) at an iteration's end"
    )


def test_idle_server_reaps_a_finished_child_at_once():
    server = forking_server(sockherd)
    with serving(server, poll_interval=30):
        tcp_request(server.server_address)
        wait_until(lambda: not server.active_children, timeout=2)
        assert zombie_children() == []


def test_stock_idle_server_leaves_a_finished_child_as_zombie():
    """The CPython behaviour sockherd improves on (differential counterpart of the above)."""
    import socketserver

    started_r, started_w = os.pipe()
    release_r, release_w = os.pipe()
    reaped_once = threading.Event()

    class Server(socketserver.ForkingTCPServer):
        def service_actions(self):
            super().service_actions()
            if self.active_children:
                reaped_once.set()  # reaping ran while the child was still busy

    server = Server(("127.0.0.1", 0), GatedHandler)
    server.started_fd, server.release_fd = started_w, release_r
    loop = threading.Thread(target=server.serve_forever, args=(30,))
    loop.start()
    try:
        client = socket.create_connection(server.server_address)
        os.read(started_r, 1)
        assert reaped_once.wait(5)  # the loop is past its reaping, on its way back to select()
        (pid,) = server.active_children
        os.write(release_w, b"r")
        wait_until(lambda: is_zombie_or_gone(pid))
        assert zombie_children() == [pid]
        client.close()
    finally:
        for fd in (started_r, started_w, release_r, release_w):
            os.close(fd)
        # Stock shutdown() waits out poll_interval; a connection wakes its select() at once.
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        wait_until(lambda: server._BaseServer__shutdown_request)
        socket.create_connection(server.server_address).close()
        stopper.join(5)
        loop.join(5)
        server.server_close()


@pytest.mark.parametrize("module", ["socketserver", "sockherd"])
def test_handle_request_loop_reaps_children_while_it_waits(module):
    """CPython never reaps in handle_request() (timeout None); sockherd reaps on child exit."""
    ss = sys.modules[module] if module == "sockherd" else __import__("socketserver")
    server = forking_server(ss, timeout=None)
    try:
        waiter = threading.Thread(target=server.handle_request)
        waiter.start()
        tcp_request(server.server_address)  # handled by the first handle_request()
        waiter.join(5)
        (pid,) = server.active_children
        waiter = threading.Thread(target=server.handle_request)
        waiter.start()  # now idle, waiting for a request that has not come
        if module == "sockherd":
            wait_until(lambda: not server.active_children, timeout=2)
            assert zombie_children() == []
        else:
            wait_until(lambda: is_zombie_or_gone(pid))
            assert pid in server.active_children and zombie_children() == [pid]
        tcp_request(server.server_address)  # lets the waiting handle_request() return
        waiter.join(5)
    finally:
        server.server_close()


def test_exit_statuses_are_tallied_by_outcome(capfd):
    class Outcomes(sockherd.StreamRequestHandler):
        def handle(self):
            command = self.rfile.readline().strip()
            if command == b"error":
                raise ValueError("handler failed")
            if command == b"exit":
                raise SystemExit(3)
            if command == b"kill":
                os.kill(os.getpid(), signal.SIGKILL)
            self.wfile.write(b"ok")

    server = forking_server(sockherd, Outcomes)
    with serving(server, poll_interval=30):
        for command in (b"ok\n", b"error\n", b"exit\n", b"kill\n"):
            tcp_request(server.server_address, command)
        wait_until(lambda: not server.active_children)
        assert server.child_exit_counts == {"exit 0": 1, "exit 1": 2, "signal SIGKILL": 1}
    err = capfd.readouterr().err
    assert err.count("Exception occurred during processing of request") == 1  # not SystemExit


def test_waiting_at_max_children_does_not_reap_a_foreign_child():
    """CPython waits with waitpid(-1) at the limit and can steal this status; sockherd cannot."""
    with pipe() as (started_r, started_w), pipe() as (release_r, release_w):
        foreign = os.fork()
        if foreign == 0:
            os._exit(72)
        try:
            wait_until(lambda: is_zombie_or_gone(foreign))
            server = forking_server(
                sockherd, GatedHandler, started_fd=started_w, release_fd=release_r, max_children=1
            )
            with serving(server, poll_interval=0.05):
                first = socket.create_connection(server.server_address)
                os.read(started_r, 1)  # the loop now blocks in collect_children() at the limit
                second = socket.create_connection(server.server_address)
                os.write(release_w, b"r")
                os.read(started_r, 1)
                os.write(release_w, b"r")
                wait_until(lambda: not server.active_children)
                first.close()
                second.close()
        finally:
            pid, status = os.waitpid(foreign, 0)
        assert pid == foreign and os.WEXITSTATUS(status) == 72


def test_close_timeout_terminates_a_stuck_child_with_a_warning(caplog):
    with pipe() as (started_r, started_w), pipe() as (release_r, release_w):
        server = forking_server(
            sockherd, GatedHandler, started_fd=started_w, release_fd=release_r, close_timeout=0.2
        )
        with serving(server, poll_interval=30):
            client = socket.create_connection(server.server_address)
            os.read(started_r, 1)
        # serving() called server_close(): the stuck child got SIGTERM after 0.2 s
        assert not server.active_children
        assert server.child_exit_counts == {"signal SIGTERM": 1}
        assert "sending SIGTERM" in caplog.text and "close_timeout=0.2" in caplog.text
        client.close()


def test_close_timeout_kills_a_child_that_ignores_sigterm(caplog, monkeypatch):
    monkeypatch.setattr(forking, "KILL_GRACE", 0.2)

    class IgnoresTerm(GatedHandler):
        def handle(self):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            super().handle()

    with pipe() as (started_r, started_w), pipe() as (release_r, release_w):
        server = forking_server(
            sockherd, IgnoresTerm, started_fd=started_w, release_fd=release_r, close_timeout=0.1
        )
        with serving(server, poll_interval=30):
            client = socket.create_connection(server.server_address)
            os.read(started_r, 1)
        assert server.child_exit_counts == {"signal SIGKILL": 1}
        assert "sending SIGKILL" in caplog.text
        client.close()


def test_without_pidfd_children_are_reaped_through_sentinel_pipes(monkeypatch, caplog):
    """Where pidfd_open() is missing or blocked, one note is logged and reaping stays prompt."""
    caplog.set_level(logging.INFO, logger="sockherd")

    def no_pidfd(pid, flags=0):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(child_watch, "_pidfd_supported", None)
    monkeypatch.setattr(os, "pidfd_open", no_pidfd, raising=False)
    server = forking_server(sockherd)
    with serving(server, poll_interval=30):
        for _ in range(3):
            tcp_request(server.server_address)
        wait_until(lambda: not server.active_children, timeout=2)
    notes = [r for r in caplog.records if "pidfd_open() is not available" in r.message]
    assert len(notes) == 1
    assert server.child_exit_counts == {"exit 0": 3}


def test_child_that_closes_its_fds_is_still_reaped():
    """A handler closing every inherited fd fires its sentinel early; the loop must not spin."""

    class ClosesFds(sockherd.StreamRequestHandler):
        def handle(self):
            keep = {self.connection.fileno(), 0, 1, 2}
            for fd in range(3, 256):
                if fd not in keep:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.wfile.write(b"closed")

    iterations = []

    class Counting(sockherd.ForkingTCPServer):
        def service_actions(self):
            iterations.append(1)
            super().service_actions()

    import unittest.mock

    with unittest.mock.patch.object(child_watch, "_pidfd_supported", False):
        server = Counting(("127.0.0.1", 0), ClosesFds)
        with serving(server, poll_interval=0.2):
            assert tcp_request(server.server_address) == b"closed"
            wait_until(lambda: not server.active_children, timeout=3)
    assert len(iterations) < 50, "the loop spun on a sentinel that fired before the child exited"


# --- output of children, in a subprocess so stdout is a real pipe ----------------------

OUTPUT_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys, threading
    sys.path.insert(0, {root!r})
    import {module} as ss

    class Printing(ss.BaseRequestHandler):
        def handle(self):
            print("handled by a child")

    print("parent says hello once")   # buffered: stdout is a pipe
    server = ss.ForkingTCPServer(("127.0.0.1", 0), Printing)
    server.timeout = 5
    for _ in range(3):
        client = socket.create_connection(server.server_address)
        server.handle_request()
        client.close()
    server.server_close()
    """
)


@pytest.mark.parametrize("module", ["socketserver", "sockherd"])
def test_what_a_child_prints_reaches_stdout_exactly_once(module):
    """CPython's os._exit() drops the child's buffered output; sockherd flushes it, and
    flushes the parent before forking so no child repeats the parent's buffered lines."""
    script = OUTPUT_SCRIPT.format(root=PROJECT_ROOT, module=module)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    )
    lines = result.stdout.splitlines()
    assert lines.count("parent says hello once") == 1
    expected_child_lines = 3 if module == "sockherd" else 0
    assert lines.count("handled by a child") == expected_child_lines
    print(json.dumps({module: lines}))
