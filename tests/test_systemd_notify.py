"""systemd's notify protocol, checked against a NOTIFY_SOCKET listener the test owns.

The test binds the datagram socket systemd would (a path, or an abstract @name), asks the
kernel for each sender's credentials (SO_PASSCRED, as systemd's NotifyAccess=main does),
runs the real `sockherd serve` command with NOTIFY_SOCKET (and WATCHDOG_USEC) set, and
reads what arrives: READY=1 once the workers are ready, RELOADING=1 with a MONOTONIC_USEC
inside the bracket of the test's own CLOCK_MONOTONIC readings, STOPPING=1 and
EXTEND_TIMEOUT_USEC while a held request drains, watchdog pings at half WATCHDOG_USEC that
stop while the supervisor is stopped (SIGSTOP) or cannot get rid of a stuck worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import listening_address, wait_until
from server_process import ServerProcess
from test_cli import PROJECT_ROOT, TESTS

import sockherd
from sockherd.supervisor.systemd_hooks import STOP_MARGIN, describe
from sockherd.supervisor.systemd_notify import (
    NOTIFY_VARIABLES,
    NotifySocket,
    forget_in_child,
    notify_address,
    notify_socket,
    watchdog_interval,
)

UCRED = struct.Struct("iII")  # pid, uid, gid


class Message(dict[str, str]):
    """One datagram: its NAME=value lines, the sender's pid and when it arrived."""

    def __init__(self, data: bytes, sender: int, at: float) -> None:
        super().__init__(line.split("=", 1) for line in data.decode().splitlines() if line)
        self.sender, self.at = sender, at


class NotifyListener:
    """The service manager's end: a bound AF_UNIX datagram socket with SO_PASSCRED."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(notify_address(address))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.address = address  # as NOTIFY_SOCKET spells it
        self.received: list[Message] = []

    def receive(self, timeout: float) -> Message | None:
        """The next datagram within `timeout` seconds, or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _flags, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except TimeoutError:
            return None
        sender = next(
            UCRED.unpack(payload[: UCRED.size])[0]
            for level, kind, payload in ancillary
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
        )
        message = Message(data, sender, time.monotonic())
        self.received.append(message)
        return message

    def wait_for(self, name: str, timeout: float = 20.0) -> Message:
        """The next message that carries `name`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and name in message:
                return message
        raise AssertionError(f"no {name} within {timeout} s; received {self.received}")

    def none_of(self, name: str, seconds: float) -> list[Message]:
        """Everything received during `seconds`, asserting that none of it carries `name`."""
        deadline, seen = time.monotonic() + seconds, []
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                assert name not in message, f"{name} at {message.at}: {message}"
                seen.append(message)
        return seen

    def drain(self) -> list[Message]:
        """Whatever is queued now (sent before this call, or in the instant of it)."""
        queued = []
        while (message := self.receive(0.001)) is not None:
            queued.append(message)
        return queued

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path) -> Iterator[NotifyListener]:
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
    else:
        address = f"@sockherd-test-{uuid.uuid4().hex}"
    notify = NotifyListener(address)
    yield notify
    notify.close()


@pytest.fixture
def path_listener(tmp_path) -> Iterator[NotifyListener]:
    notify = NotifyListener(str(tmp_path / "notify.sock"))
    yield notify
    notify.close()


class Served:
    """`sockherd serve prefork_handlers:Commands ARGS` with NOTIFY_SOCKET set; the log goes
    to a file that `wait_for_log()` polls."""

    def __init__(self, notify: NotifyListener, *args: str, **environ: str) -> None:
        handler = "prefork_handlers:Commands"
        if args[:1] == ("--handler",):
            handler, args = args[1], args[2:]
        self.log_file: Any = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONPATH=TESTS, NOTIFY_SOCKET=notify.address, **environ)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sockherd", "serve", handler,
             "--bind", "127.0.0.1:0", "--graceful-timeout", "20", *args],
            cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stderr=self.log_file,
        )  # fmt: skip
        self.pid = self.process.pid
        self.address = listening_address(self.wait_for_log("listening on"))

    @property
    def log(self) -> str:
        return os.pread(self.log_file.fileno(), 1 << 22, 0).decode(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        def line() -> str | None:
            found = [each for each in self.log.splitlines() if text in each]
            assert found or self.process.poll() is None, f"exited before {text!r}:\n{self.log}"
            return found[0] if found else None

        return str(wait_until(line, timeout=timeout, interval=0.01))

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log_file.close()


@contextlib.contextmanager
def served(notify: NotifyListener, *args: str, **environ: str) -> Iterator[Served]:
    server = Served(notify, *args, **environ)
    try:
        yield server
    finally:
        server.close()


def request(address: Any, line: bytes, timeout: float = 20.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as client:
        client.sendall(line)
        return client.makefile("rb").readline()


PREFORK = ("--mode", "prefork", "--workers", "2")


# --- protocol-level, against the real command ------------------------------------------------


def test_ready_once_the_workers_are_ready_from_the_supervisor_itself(listener):
    with served(listener, *PREFORK) as server:
        ready = listener.wait_for("READY")
        assert ready["READY"] == "1" and ready["MAINPID"] == str(server.pid)
        assert ready.sender == server.pid  # what NotifyAccess=main checks
        assert ready["STATUS"].startswith("running: 2 workers (2 idle, 0 busy)"), ready
        server.wait_for_log("2 workers ready", timeout=1)  # logged by then, not later
        for _ in range(20):
            assert request(server.address, b"echo hi\n").endswith(b" hi\n")
        wait_until(lambda: _rate(listener.wait_for("STATUS")) > 0, timeout=20)
        assert [m for m in listener.received if "READY" in m] == [ready]


def _rate(message: Message) -> float:
    """The requests per second a STATUS= line reports."""
    return float(message["STATUS"].rpartition(", ")[2].removesuffix(" req/s"))


@pytest.mark.parametrize("mode", ["sync", "thread", "fork"])
def test_every_mode_says_ready_and_stopping(path_listener, mode):
    with served(path_listener, "--mode", mode) as server:
        ready = path_listener.wait_for("READY")
        assert ready.sender == server.pid and ready["STATUS"].startswith("running: 0 requests")
        server.process.send_signal(signal.SIGTERM)
        stopping = path_listener.wait_for("STOPPING")
        assert stopping["STATUS"].startswith("draining") and stopping.sender == server.pid
        assert server.process.wait(20) == 0


def test_hup_sends_reloading_with_monotonic_usec_then_ready(path_listener):
    with served(path_listener, *PREFORK) as server:
        path_listener.wait_for("READY")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.process.send_signal(signal.SIGHUP)
        reloading = path_listener.wait_for("RELOADING")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after, (before, reloading, after)
        ready = path_listener.wait_for("READY")
        server.wait_for_log("reload done: generation 1 serves", timeout=1)
        assert ready["STATUS"].startswith("running: 2 workers (2 idle, 0 busy)"), ready
        assert all("STOPPING" not in m for m in path_listener.received)


@pytest.mark.timeout(90)
def test_an_in_place_upgrade_sends_reloading_then_ready_from_the_same_pid(path_listener):
    with served(path_listener, *PREFORK, "--upgrade-timeout", "30") as server:
        path_listener.wait_for("READY")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.process.send_signal(signal.SIGUSR2)
        reloading = path_listener.wait_for("RELOADING")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after, (before, reloading, after)
        ready = path_listener.wait_for("READY", timeout=60)
        server.wait_for_log("upgrade done", timeout=5)
        assert ready["MAINPID"] == str(server.pid)
        assert {message.sender for message in path_listener.received} == {server.pid}
        assert all("STOPPING" not in m for m in path_listener.received)


@pytest.mark.timeout(90)
def test_term_with_a_request_in_flight_sends_stopping_and_extends_the_stop_timeout(listener):
    with served(listener, *PREFORK, "--graceful-timeout", "30") as server:
        listener.wait_for("READY")
        with socket.create_connection(server.address, timeout=60) as client:
            client.sendall(b"hold late\n")  # in progress until the test sends another line
            wait_until(lambda: "1 busy" in (listener.wait_for("STATUS").get("STATUS", "")), 20)
            server.process.send_signal(signal.SIGTERM)
            stopping = listener.wait_for("STOPPING")
            assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("draining")
            extensions = [listener.wait_for("EXTEND_TIMEOUT_USEC") for _ in range(3)]
            usec = [int(m["EXTEND_TIMEOUT_USEC"]) for m in extensions]
            # each covers the time left to the graceful deadline plus the margin, no more
            assert all(STOP_MARGIN * 1e6 < u <= (30 + STOP_MARGIN) * 1e6 for u in usec), usec
            assert usec == sorted(usec, reverse=True), usec  # the deadline does not move
            gaps = [b.at - a.at for a, b in zip(extensions, extensions[1:], strict=False)]
            assert all(0.5 < gap < 5 for gap in gaps), gaps  # repeated about every second
            assert server.process.poll() is None  # still draining: the request holds it
            client.sendall(b"release\n")
            assert client.makefile("rb").readline().endswith(b" late\n")
        assert server.process.wait(20) == 0
        listener.none_of("READY", 0.2)  # whatever was still queued
        assert any(m.get("STATUS") == "stopped" for m in listener.received), listener.received


@pytest.mark.timeout(90)
def test_watchdog_pings_at_half_watchdog_usec(path_listener):
    with served(path_listener, *PREFORK, WATCHDOG_USEC="3000000") as server:
        pings = [path_listener.wait_for("WATCHDOG") for _ in range(5)]
        assert all(m["WATCHDOG"] == "1" and m.sender == server.pid for m in pings)
        gaps = [b.at - a.at for a, b in zip(pings, pings[1:], strict=False)]
        print(f"\nwatchdog pings every {', '.join(f'{g:.2f}' for g in gaps)} s (WATCHDOG_USEC=3 s)")
        # never more often than half the interval; never as late as the interval itself
        assert all(1.4 < gap < 3.0 for gap in gaps), gaps


def test_watchdog_pid_of_another_process_means_no_pings(path_listener):
    with served(path_listener, *PREFORK, WATCHDOG_USEC="400000", WATCHDOG_PID="1"):
        path_listener.wait_for("READY")
        path_listener.none_of("WATCHDOG", 2.0)  # five times the interval


@pytest.mark.timeout(90)
def test_a_stopped_supervisor_sends_no_ping_and_pings_again_after_sigcont(path_listener):
    with served(path_listener, *PREFORK, WATCHDOG_USEC="1000000") as server:
        path_listener.wait_for("READY")
        path_listener.wait_for("WATCHDOG")
        os.kill(server.pid, signal.SIGSTOP)
        wait_until(lambda: _proc_state(server.pid) == "T", timeout=10)
        path_listener.drain()  # what was sent before the stop; then silence
        stopped_at = time.monotonic()
        path_listener.none_of("WATCHDOG", 3.0)  # three watchdog timeouts
        assert _proc_state(server.pid) == "T"
        os.kill(server.pid, signal.SIGCONT)
        resumed = path_listener.wait_for("WATCHDOG", timeout=10)
        print(f"\nno ping for {resumed.at - stopped_at:.2f} s while stopped; pings again")
        path_listener.wait_for("WATCHDOG", timeout=10)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


FREEZER = "/sys/fs/cgroup/freezer"


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """Freeze `pid` with cgroup v1's freezer: a frozen task dies of SIGKILL only once
    thawed, the honest way to have a worker that the supervisor's SIGKILL cannot end."""
    group = os.path.join(FREEZER, f"sockherd-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "cgroup.procs"), "w") as procs:
            procs.write(str(pid))
        with open(os.path.join(group, "freezer.state"), "w") as state:
            state.write("FROZEN")
        yield
    finally:
        with open(os.path.join(group, "freezer.state"), "w") as state:
            state.write("THAWED")
        with contextlib.suppress(OSError):  # the worker's exit empties the group
            wait_until(lambda: not open(os.path.join(group, "cgroup.procs")).read(), 10)
        os.rmdir(group)


def _freezer_usable() -> bool:
    return os.access(FREEZER, os.W_OK) and os.path.exists(os.path.join(FREEZER, "tasks"))


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _freezer_usable(), reason="needs a writable cgroup v1 freezer (root)")
def test_no_ping_while_a_worker_outlives_worker_timeout_and_kill_grace(path_listener):
    args = ("--mode", "prefork", "--workers", "1", "--worker-timeout", "4", "--kill-grace", "1")
    with served(path_listener, *args, WATCHDOG_USEC="1000000") as server:
        path_listener.wait_for("READY")
        worker = int(request(server.address, b"echo x\n").split()[0])
        with socket.create_connection(server.address, timeout=60) as client:
            client.sendall(b"hang\n")
            wait_until(lambda: "1 busy" in path_listener.wait_for("STATUS")["STATUS"], 20)
            with frozen(worker):
                server.wait_for_log("systemd watchdog: not pinging", timeout=20)
                assert "has been busy" in server.log and f"(pid {worker})" in server.log
                path_listener.drain()  # what was sent before it decided
                path_listener.none_of("WATCHDOG", 2.5)  # the supervisor withholds its pings
                assert os.path.exists(f"/proc/{worker}")  # SIGKILLed, frozen, still alive
            # thawed: the SIGKILL lands, the worker is reaped and replaced, pings resume
            path_listener.wait_for("WATCHDOG", timeout=20)
            server.wait_for_log("systemd watchdog: pinging again", timeout=5)


class Environ(sockherd.StreamRequestHandler):
    """Answers the worker's pid and the notify variables it sees."""

    def handle(self) -> None:
        seen = [name for name in NOTIFY_VARIABLES if name in os.environ]
        self.wfile.write(f"{os.getpid()} {','.join(seen) or '-'}\n".encode())


def test_workers_neither_hold_the_socket_nor_see_the_variables(path_listener):
    handler = ("--handler", "test_systemd_notify:Environ")
    with served(path_listener, *handler, *PREFORK, WATCHDOG_USEC="30000000") as server:
        path_listener.wait_for("READY")
        workers = {int(request(server.address, b"echo x\n").split()[0]) for _ in range(4)}
        assert server.pid not in workers
        notify_inodes = _unbound_datagram_sockets(server.pid)
        assert len(notify_inodes) == 1, notify_inodes  # the supervisor's one sender
        for worker in workers:
            assert not notify_inodes & _socket_inodes(worker), worker
        assert request(server.address, b"?\n").split()[1] == b"-"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _unbound_datagram_sockets(pid: int) -> set[str]:
    """Inodes of `pid`'s AF_UNIX datagram sockets that have no address and no peer."""
    mine = _socket_inodes(pid)
    found = set()
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            kind, state, inode = fields[4], fields[5], fields[6]
            if inode in mine and kind == "0002" and state == "01" and len(fields) == 7:
                found.add(inode)
    return found


def test_a_programs_own_prefork_server_says_ready_and_stopping(path_listener, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.address)
    script = "serve_spec(dict(server='PreforkTCPServer', handler='prefork_handlers:Commands',"
    script += " settings={'workers': 2}, attributes={}))"
    with ServerProcess(script) as server:
        ready = path_listener.wait_for("READY")
        assert ready.sender == server.pid and ready["MAINPID"] == str(server.pid)
        server.process.send_signal(signal.SIGTERM)
        assert path_listener.wait_for("STOPPING").sender == server.pid
        assert server.stop() == 0


# --- the protocol's pieces ---------------------------------------------------------------------


def test_notify_socket_addresses():
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == "\0abstract/name"
    for bad in ("relative/path", "@", "vsock:2:1234", ""):
        with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
            notify_address(bad)


def test_absent_or_unusable_notify_socket_means_silence(caplog):
    assert notify_socket({}) is None
    with caplog.at_level(logging.WARNING):
        assert notify_socket({"NOTIFY_SOCKET": "not/absolute"}) is None
    assert "neither an absolute path" in caplog.text


def test_watchdog_interval_is_ours_only():
    pid = os.getpid()
    assert watchdog_interval({}, pid) == 0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(pid)}, pid) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, pid) == 0
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid) == 0
    assert watchdog_interval({"WATCHDOG_USEC": "-5"}, pid) == 0


def test_send_failures_are_logged_once_per_episode_and_never_raise(tmp_path, caplog):
    path = str(tmp_path / "gone.sock")
    sender = NotifySocket(path)
    try:
        with caplog.at_level(logging.INFO, logger="sockherd.supervisor.systemd_notify"):
            assert not sender.send(READY=1) and not sender.send(STATUS="x")
            assert caplog.text.count("cannot send") == 1 and "ENOENT" in caplog.text
            notify = NotifyListener(path)
            try:
                assert sender.send(STATUS="back")
                assert notify.receive(5) == {"STATUS": "back"}
            finally:
                notify.close()
            assert "get through to" in caplog.text
            assert not sender.send(READY=1)  # a new episode is logged again
            assert caplog.text.count("cannot send") == 2
    finally:
        sender.close()
    assert not sender.send(READY=1)  # closed: silent


def test_the_sender_is_close_on_exec_and_non_blocking(tmp_path):
    sender = NotifySocket(str(tmp_path / "n.sock"))
    try:
        assert sender.sock is not None
        assert not sender.sock.get_inheritable() and not sender.sock.getblocking()
    finally:
        sender.close()


def test_a_forked_child_forgets_socket_and_variables(tmp_path):
    sender = NotifySocket(str(tmp_path / "n.sock"))
    environ = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    forget_in_child(sender, environ)
    assert environ == {"PATH": "/bin"} and sender.sock is None


def test_status_text():
    from sockherd.metrics.snapshot import PoolSnapshot, SupervisorSnapshot, WorkerSnapshot

    def worker(state: str) -> WorkerSnapshot:
        return WorkerSnapshot(0, 1, 0, state, 0, 0, 1.0, 0.1, 0.0)

    pool = PoolSnapshot("accept", 3, 0, (worker("idle"), worker("busy"), worker("idle")), (), {},
                        {}, {})  # fmt: skip
    server = _server_snapshot(pool)
    snapshot = SupervisorSnapshot("running", 1, 5.0, None, (server,), 0, True)
    assert (
        describe(snapshot, "running", 812.46) == "running: 3 workers (2 idle, 1 busy), 812.5 req/s"
    )
    draining = SupervisorSnapshot("draining", 1, 5.0, 8.4, (_server_snapshot(None),), 0, True)
    assert describe(draining, "draining", 0) == (
        "draining: 0 requests in progress, 0.0 req/s, 8 s to the graceful deadline"
    )


def _server_snapshot(pool: Any) -> Any:
    from sockherd.metrics.snapshot import ServerSnapshot

    return ServerSnapshot("s", "prefork" if pool else "sync", {}, (), 0.0, 0, {}, {}, None, None,
                          None, pool)  # fmt: skip


def test_an_upgrade_is_a_reload_to_systemd(path_listener):
    """UPGRADING (the in-place upgrade's state) says RELOADING=1 with MONOTONIC_USEC, and
    the move back to RUNNING says READY=1, as a HUP's reload does."""
    from sockherd.supervisor.arbiter import Arbiter
    from sockherd.supervisor.supervisor_state import State
    from sockherd.supervisor.systemd_hooks import SystemdHooks

    with sockherd.TCPServer(("127.0.0.1", 0), sockherd.StreamRequestHandler) as server:
        arbiter = Arbiter([server], install_signals=False)
        sender = NotifySocket(path_listener.address)
        hooks = SystemdHooks(arbiter, sender, watchdog=1.0)
        try:
            assert hooks.wait_bound(0.5) == 0.25  # a quarter of WATCHDOG_USEC
            arbiter.state.move(State.RUNNING)
            hooks.after_iteration(server)
            assert path_listener.wait_for("READY", 5)["STATUS"].startswith("running")
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            arbiter.state.move(State.UPGRADING)
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            upgrading = path_listener.wait_for("RELOADING", 5)
            assert before <= int(upgrading["MONOTONIC_USEC"]) <= after
            assert upgrading["STATUS"].startswith("upgrading")
            arbiter.state.move(State.RUNNING)
            hooks.after_iteration(server)
            assert path_listener.wait_for("READY", 5)["MAINPID"] == str(os.getpid())
        finally:
            arbiter.state.listeners.clear()
            sender.close()
            arbiter.close()
