"""Shared fixtures: the leak check every test runs under, and helpers to run real servers.

`no_leaks` (autouse) fails a test that leaves behind a child process (running or
zombie), a thread or an open file descriptor.  It waits for them to go away
for up to `SETTLE_SECONDS`, polling the condition, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import socketserver as stock_socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import sockherd

SETTLE_SECONDS = 3.0
FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


def _open_fds() -> set[int]:
    fds = set()
    for name in os.listdir(FD_DIR):
        fd = int(name)
        try:
            os.fstat(fd)  # listdir's own fd is gone by now
        except OSError:
            continue
        fds.add(fd)
    return fds


def _children() -> dict[int, str]:
    result = {}
    for child in psutil.Process().children(recursive=True):
        try:
            result[child.pid] = child.status()
        except psutil.NoSuchProcess:
            pass
    return result


def _snapshot() -> tuple[set[int], set[threading.Thread], set[int]]:
    gc.collect()
    return set(_children()), set(threading.enumerate()), _open_fds()


@pytest.fixture(scope="session", autouse=True)
def frozen_session_heap() -> Iterator[None]:
    """Keep what the session holds before its first test (imported modules, collected tests)
    out of the collector's way: `no_leaks` runs two full collections per test, which would
    otherwise traverse all of it (~45 ms each on the 2-core CI machine).  What a test
    creates is collected as before."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a process, a zombie, a thread or an fd behind."""
    children_before, threads_before, fds_before = _snapshot()
    yield
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        gc.collect()
        children = {pid: s for pid, s in _children().items() if pid not in children_before}
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        fds = _open_fds() - fds_before
        if not (children or threads or fds) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    problems = []
    if children:
        problems.append(f"child processes left behind (pid: status): {children}")
        for pid in children:  # clean up so the next test starts clean
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
    if threads:
        problems.append(f"threads left running: {[t.name for t in threads]}")
    if fds:
        details = []
        for fd in sorted(fds):
            try:
                details.append(f"{fd}->{os.readlink(f'{FD_DIR}/{fd}')}")
            except OSError:
                details.append(str(fd))
        problems.append(f"file descriptors left open: {details}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


# The server kinds a behaviour runs over (tests/server_kinds.py says what each one is).
KINDS = ["sync", "thread", "fork", "prefork-accept", "prefork-dispatch", "prefork-threads"]


@pytest.fixture(params=KINDS)
def server_kind(request: pytest.FixtureRequest) -> Any:
    """A `server_kinds.ServerKind`: by default each sockherd kind in turn; a test adds CPython's
    or skips some, with a reason, through `server_kinds.each_kind()`."""
    from server_kinds import KIND  # server_kinds imports this module

    return KIND[request.param]


@pytest.fixture
def recorder() -> Iterator[Any]:
    """A `server_kinds.Recorder`: what hooks ran, in which thread or process."""
    from server_kinds import Recorder

    rec = Recorder()
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture(params=["socketserver", "sockherd"])
def ss(request: pytest.FixtureRequest) -> Any:
    """The module under test: CPython's socketserver, then sockherd (differential tests)."""
    return stock_socketserver if request.param == "socketserver" else sockherd


@contextlib.contextmanager
def serving(server: Any, poll_interval: float = 0.5) -> Iterator[threading.Thread]:
    """Run `server.serve_forever()` in a thread; shut down and close the server on exit."""
    thread = threading.Thread(
        target=server.serve_forever, args=(poll_interval,), name="serve_forever", daemon=True
    )
    thread.start()
    try:
        yield thread
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def pool_of(server: Any) -> Any:
    """The public snapshot of a prefork server's pool, once its supervisor runs it."""
    return wait_until(server.pool_snapshot)


def metrics_endpoint(server: Any) -> Any:
    """The metrics endpoint serving `server`'s loop, once it listens."""
    from sockherd.metrics.service import endpoint_of

    return wait_until(lambda: endpoint_of(server))


def tcp_request(
    address: tuple[str, int], payload: bytes = b"ping\n", timeout: float = 5.0
) -> bytes:
    """Send `payload`, half-close, and return everything the server sends back."""
    with socket.create_connection(address, timeout=timeout) as client:
        client.sendall(payload)
        with contextlib.suppress(OSError):  # the server may already have closed
            client.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def child_processes() -> set[int]:
    """Pids of this process's descendants, running or zombie."""
    return set(_children())


def zombie_children() -> list[int]:
    """Pids of this process's children that are zombies."""
    return [pid for pid, status in _children().items() if status == psutil.STATUS_ZOMBIE]


def wait_for_line(stream: Any, text: str, limit: int = 200) -> str:
    """Read a process's stderr line by line until one contains `text`; return that line.

    Fails, showing what was read, if the stream ends (the process died) first.
    """
    seen = []
    for _ in range(limit):
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r}; the process wrote:\n{''.join(seen)}")


def listening_address(line: str) -> Any:
    """(host, port) or the path from a "listening on tcp://HOST:PORT (mode)" log line."""
    url = line.split("listening on ", 1)[1].split(" ", 1)[0]
    scheme, _, rest = url.partition(":")
    if scheme in ("unix", "unixgram"):
        return rest
    host, _, port = rest.removeprefix("//").rpartition(":")
    return host.strip("[]"), int(port)
