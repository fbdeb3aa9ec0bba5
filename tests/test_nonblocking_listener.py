"""NonBlockingListener: the accepting, deadlines and closing shared by the control socket and
the metrics endpoint, tested on its own with real loopback sockets and a real selector loop.

EMFILE is real too: the test lowers this process's RLIMIT_NOFILE to its lowest free fd
while a connection waits in the backlog, and restores it in a `finally`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import wait_until

from sockherd.server.nonblocking_listener import Client, NonBlockingListener


class Loop:
    """The part of a serve loop the listener uses: wake sources on a selector, and passes."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.removed: list[int] = []

    def add_source(self, fd: int, callback: Callable[[], None], writable: bool = False) -> None:
        events = selectors.EVENT_WRITE if writable else selectors.EVENT_READ
        if fd in self.selector.get_map():
            self.selector.modify(fd, events, callback)
        else:
            self.selector.register(fd, events, callback)

    def remove_source(self, fd: int) -> None:
        self.removed.append(fd)
        with contextlib.suppress(KeyError):
            self.selector.unregister(fd)

    def watches(self, fd: int) -> bool:
        return fd in self.selector.get_map()

    def run_pass(self, listener: NonBlockingListener[Client], timeout: float = 0.01) -> None:
        """One pass of a serve loop: run what woke, then the per-pass housekeeping."""
        for key, _events in self.selector.select(timeout):
            key.data()
        listener.expire_slow_clients()


class LineEcho:
    """The owner: reads one line from each client, sends it back and drops the client."""

    def __init__(
        self, loop: Loop, client_deadline: float = 10.0, max_clients: int | None = None
    ) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.admitted = 0
        self.server: NonBlockingListener[Client] = NonBlockingListener(
            sock,
            "the test listener",
            loop.add_source,
            loop.remove_source,
            admit=self.admit,
            on_ready=self.ready,
            client_deadline=client_deadline,
            max_clients=max_clients,
        )
        self.address = sock.getsockname()

    def admit(self, connection: socket.socket) -> Client:
        self.admitted += 1
        return Client(connection)

    def ready(self, client: Client) -> None:
        line = client.connection.recv(1024)
        if line.endswith(b"\n") or not line:
            with contextlib.suppress(OSError):
                client.connection.send(line)
            self.server.drop(client)


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.selector.close()


@pytest.fixture
def echo(loop: Loop) -> Iterator[LineEcho]:
    owner = LineEcho(loop)
    yield owner
    owner.server.close()


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)


def served_until(
    loop: Loop, owner: LineEcho, condition: Callable[[], object]
) -> Callable[[], object]:
    """A `wait_until` condition that runs one loop pass before each check."""

    def check() -> object:
        loop.run_pass(owner.server)
        return condition()

    return check


def lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


@contextlib.contextmanager
def fd_table_full() -> Iterator[None]:
    """No new fd can be made (EMFILE) until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_fd(), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_client_is_accepted_served_and_dropped(loop: Loop, echo: LineEcho) -> None:
    with connect(echo.address) as client:
        client.sendall(b"hello\n")
        wait_until(served_until(loop, echo, lambda: echo.admitted == 1 and not echo.server.clients))
        assert client.recv(100) == b"hello\n"
        assert client.recv(100) == b""  # and closed


def test_out_of_fds_pauses_accepts_with_one_warning_and_recovers(
    loop: Loop, echo: LineEcho, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sockherd.server.accept_backoff")
    listener_fd = echo.server.listener.fileno()
    with connect(echo.address) as client:
        client.sendall(b"queued\n")
        with fd_table_full():
            # Each pass after a pause runs out tries again and fails again: the loop does
            # not spin on the readable listener, and no warning is repeated.
            wait_until(
                served_until(loop, echo, lambda: echo.server.accept_errors().get("EMFILE", 0) >= 3)
            )
            assert echo.admitted == 0
            paused_on_failure = echo.server.paused and not loop.watches(listener_fd)
        wait_until(served_until(loop, echo, lambda: echo.admitted == 1 and not echo.server.clients))
        assert client.recv(100) == b"queued\n"  # it waited in the backlog and was served
    warnings = [r.getMessage() for r in caplog.records]
    assert paused_on_failure
    assert not echo.server.paused and loop.watches(listener_fd)
    assert len([w for w in warnings if "Pausing accepts" in w]) == 1
    emfile = f"[Errno {errno.EMFILE}] {os.strerror(errno.EMFILE)}"
    assert warnings[0].startswith(f"accept() on the test listener failed: {emfile}. Pausing")
    assert len([w for w in warnings if "works again after" in w]) == 1


def test_a_client_past_its_deadline_is_dropped(loop: Loop) -> None:
    owner = LineEcho(loop, client_deadline=0.2)
    try:
        with connect(owner.address) as silent:
            wait_until(served_until(loop, owner, lambda: len(owner.server.clients) == 1))
            accepted_at = time.monotonic()
            (client,) = owner.server.clients.values()
            assert client.deadline <= accepted_at + 0.2
            wait_until(served_until(loop, owner, lambda: not owner.server.clients))
            dropped_after = time.monotonic() - accepted_at
            assert silent.recv(100) == b""  # closed by the server, nothing sent
        assert 0.1 < dropped_after < 2.0
        assert not loop.watches(client.fd)
    finally:
        owner.server.close()


def test_connections_beyond_the_client_limit_are_closed_at_once(loop: Loop) -> None:
    owner = LineEcho(loop, max_clients=2)
    try:
        held = [connect(owner.address) for _ in range(2)]
        extra = connect(owner.address)
        try:
            wait_until(served_until(loop, owner, lambda: owner.admitted == 2))
            extra.settimeout(5)
            assert extra.recv(100) == b""  # closed without a word
            assert len(owner.server.clients) == 2
            held[0].sendall(b"still served\n")
            wait_until(served_until(loop, owner, lambda: len(owner.server.clients) == 1))
            assert held[0].recv(100) == b"still served\n"
            with connect(owner.address) as after:  # a slot is free again
                wait_until(served_until(loop, owner, lambda: owner.admitted == 3))
                after.sendall(b"next\n")
                wait_until(served_until(loop, owner, lambda: len(owner.server.clients) == 1))
                assert after.recv(100) == b"next\n"
        finally:
            for sock in (*held, extra):
                sock.close()
    finally:
        owner.server.close()


def test_dropping_a_client_twice_or_a_stale_record_does_nothing(loop: Loop, echo: LineEcho) -> None:
    with connect(echo.address) as first:
        wait_until(served_until(loop, echo, lambda: len(echo.server.clients) == 1))
        (record,) = echo.server.clients.values()
        echo.server.drop(record)
        echo.server.drop(record)
        assert first.recv(100) == b""
        with connect(echo.address) as second:  # may well be given the same fd
            wait_until(served_until(loop, echo, lambda: len(echo.server.clients) == 1))
            echo.server.drop(record)  # the stale record must not close the new client
            second.sendall(b"alive\n")
            wait_until(served_until(loop, echo, lambda: not echo.server.clients))
            assert second.recv(100) == b"alive\n"


def test_close_drops_every_client_and_the_listener(loop: Loop) -> None:
    owner = LineEcho(loop)
    address = owner.address
    with connect(address) as client:
        wait_until(served_until(loop, owner, lambda: len(owner.server.clients) == 1))
        owner.server.close()
        owner.server.close()  # idempotent
        assert client.recv(100) == b""
    assert not loop.selector.get_map()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


def test_close_in_child_closes_the_inherited_sockets_and_leaves_the_loop_alone(
    loop: Loop, echo: LineEcho
) -> None:
    with connect(echo.address) as client:
        wait_until(served_until(loop, echo, lambda: len(echo.server.clients) == 1))
        fds = [echo.server.listener.fileno(), *echo.server.clients]
        removed_before = len(loop.removed)
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            code = 1
            try:
                echo.server.close_in_child()
                closed = []
                for fd in fds:
                    try:
                        os.fstat(fd)
                    except OSError:
                        closed.append(fd)
                code = 0 if closed == fds and len(loop.removed) == removed_before else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The selector is shared with the child: had the child unregistered anything,
        # the parent would hear nothing from now on.
        client.sendall(b"parent still serves\n")
        wait_until(served_until(loop, echo, lambda: not echo.server.clients))
        assert client.recv(100) == b"parent still serves\n"
    with connect(echo.address) as later:
        later.sendall(b"and accepts\n")
        wait_until(served_until(loop, echo, lambda: echo.admitted == 2 and not echo.server.clients))
        assert later.recv(100) == b"and accepts\n"
