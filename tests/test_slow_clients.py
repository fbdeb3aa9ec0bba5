"""Slow clients: `read_timeout` cuts off slowloris connections in every mode; None is CPython's.

The servers under attack run in subprocesses (`server_process`), so the attacking
and measuring client threads never share a process that forks.
"""

from __future__ import annotations

import math
import select
import socket
import threading
import time
from typing import Any

import pytest
from conftest import serving, wait_until
from server_process import metric_value, request_line, server_process

import sockherd
from sockherd.examples.echo import EchoHandler

READ_TIMEOUT = 0.5
ATTACKERS = 4
TRICKLE_EVERY = 0.2  # seconds between two bytes of a slowloris client
ATTACK_SECONDS = 3.0
NORMAL_EVERY = 0.05  # seconds between two requests of the normal client
SLACK = 1.0  # scheduling on a shared 2-core machine

# (server class, prefork settings, requests served at once)
MODES = {
    "prefork-accept": ("PreforkTCPServer", {"workers": 2, "handoff": "accept"}, 2),
    "prefork-dispatch": ("PreforkTCPServer", {"workers": 2, "handoff": "dispatch"}, 2),
    "threading": ("ThreadingTCPServer", {}, math.inf),
    "forking": ("ForkingTCPServer", {}, math.inf),
    "sync": ("TCPServer", {}, 1),
}
ECHO = "sockherd.examples.echo:EchoHandler"


class Slowloris:
    """`ATTACKERS` threads that connect and trickle one byte per TRICKLE_EVERY, with no
    newline, reconnecting whenever the server cuts them off, until `stop` or the deadline."""

    def __init__(self, address: tuple[str, int], seconds: float) -> None:
        self.address = address
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.cut_off: list[float] = []  # how long each connection lived until the server cut it
        self.threads = [threading.Thread(target=self._attack) for _ in range(ATTACKERS)]

    def __enter__(self) -> Slowloris:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def _attack(self) -> None:
        for _ in range(1000):  # bounded in count as well as in time
            if not self._running():
                return
            with socket.create_connection(self.address, timeout=5) as attacker:
                began = time.monotonic()
                with self.lock:
                    self.connections += 1
                if self._trickle(attacker):
                    with self.lock:
                        self.cut_off.append(time.monotonic() - began)

    def _trickle(self, attacker: socket.socket) -> bool:
        """Trickle until the server closes the connection (True) or the attack ends."""
        while self._running():
            try:
                attacker.send(b"x")
            except OSError:
                return True
            # The pause between two bytes doubles as the wait for the server's close.
            readable, _, _ = select.select([attacker], [], [], TRICKLE_EVERY)
            if readable:
                try:
                    return attacker.recv(100) == b""
                except OSError:
                    return True
        return False


def normal_client_latencies(address: tuple[str, int], attack: Slowloris) -> list[float]:
    """An echo request every NORMAL_EVERY seconds while the attack lasts; their latencies."""
    latencies = []
    for index in range(1000):
        if not attack._running():
            break
        began = time.monotonic()
        line = f"normal {index}\n".encode()
        assert request_line(address, line) == line
        latencies.append(time.monotonic() - began)
        attack.stop.wait(NORMAL_EVERY)  # pacing, not synchronisation
    return latencies


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_slowloris_clients_cannot_starve_a_normal_client(mode):
    server, settings, concurrency = MODES[mode]
    with server_process(
        server,
        ECHO,
        settings,
        read_timeout=READ_TIMEOUT,
        metrics_address=["127.0.0.1", 0],
        metrics_name="slow",
    ) as running:
        if settings:
            wait_until(
                lambda: metric_value(running.scrape(), "sockherd_workers", state="idle") == 2,
                timeout=20,
            )
        with Slowloris(running.address, ATTACK_SECONDS) as attack:
            wait_until(lambda: attack.connections >= ATTACKERS)
            latencies = normal_client_latencies(running.address, attack)
        # A forking server counts a child when it reaps it, a moment after the cut.
        outcome = "error" if mode == "forking" else "timeout"  # a child reports by exit status

        def counted() -> float:
            return metric_value(running.scrape(), "sockherd_requests_total", outcome=outcome)

        wait_until(lambda: counted() >= len(attack.cut_off))
        assert running.stop() == 0
        log = running.log

    worst = max(latencies)
    waves = 0 if concurrency == math.inf else math.ceil(ATTACKERS / concurrency)
    bound = READ_TIMEOUT * waves + SLACK
    print(
        f"\n{mode}: read_timeout={READ_TIMEOUT} s, {ATTACKERS} slowloris clients "
        f"({attack.connections} connections, {len(attack.cut_off)} cut off after at most "
        f"{max(attack.cut_off, default=0):.2f} s); normal client: {len(latencies)} requests, "
        f"worst latency {worst:.3f} s (bound {bound:.1f} s)"
    )
    assert len(latencies) >= 2
    assert worst <= bound
    assert len(attack.cut_off) >= ATTACKERS  # every attacker was cut off at least once
    cut_lines = log.count(f"timed out (read_timeout={READ_TIMEOUT:g} s); closed")
    assert cut_lines >= len(attack.cut_off)
    assert "Traceback" not in log


@pytest.mark.parametrize("mode", MODES)
def test_a_silent_client_is_cut_off_after_read_timeout(mode):
    server, settings, _concurrency = MODES[mode]
    with server_process(server, ECHO, settings, read_timeout=READ_TIMEOUT) as running:
        assert request_line(running.address, b"warm\n") == b"warm\n"  # a worker is up
        with socket.create_connection(running.address, timeout=10) as silent:
            began = time.monotonic()
            assert silent.recv(100) == b""  # the server closes it
            lived = time.monotonic() - began
        assert running.stop() == 0
    print(f"\n{mode}: a silent client was cut off after {lived:.3f} s")
    assert READ_TIMEOUT - 0.05 <= lived <= READ_TIMEOUT + SLACK


# --- the contract, in process (threads only: nothing here forks) ----------------------


class Recording(sockherd.StreamRequestHandler):
    """Echo one line; record what the handler saw of its connection and what it raised."""

    seen: list[Any] = []

    def handle(self) -> None:
        type(self).seen.append(("timeout", self.request.gettimeout()))
        try:
            self.wfile.write(self.rfile.readline())
        except Exception as error:
            type(self).seen.append(("raised", type(error)))
            raise


@pytest.fixture
def recording():
    Recording.seen = []
    yield Recording
    Recording.seen = []


def test_a_timed_out_read_raises_socket_timeout_in_the_handler(recording):
    server = sockherd.ThreadingTCPServer(("127.0.0.1", 0), recording)
    server.read_timeout = 0.2
    with serving(server, poll_interval=0.05):
        with socket.create_connection(server.server_address, timeout=10) as silent:
            assert silent.recv(100) == b""
        wait_until(lambda: server.request_stats.by_outcome["timeout"] == 1)
    assert recording.seen == [("timeout", 0.2), ("raised", socket.timeout)]
    assert server.request_stats.by_outcome["error"] == 0


def test_a_client_that_keeps_completing_requests_is_not_cut_off():
    """The deadline restarts with each reply: a keep-alive client gets read_timeout per line."""
    server = sockherd.ThreadingTCPServer(("127.0.0.1", 0), EchoHandler)
    server.read_timeout = 0.4
    with serving(server, poll_interval=0.05):
        with socket.create_connection(server.server_address, timeout=10) as client:
            began = time.monotonic()
            for index in range(6):  # 6 x 0.25 s: well past one read_timeout in all
                client.sendall(b"line %d\n" % index)
                assert client.recv(100) == b"line %d\n" % index
                readable, _, _ = select.select([client], [], [], 0.25)  # nothing comes back
                assert readable == []
            assert time.monotonic() - began > 3 * server.read_timeout
    assert server.request_stats.by_outcome["timeout"] == 0


def test_the_handlers_own_timeout_wins_over_read_timeout():
    class Patient(EchoHandler):
        timeout = 1.0

    server = sockherd.ThreadingTCPServer(("127.0.0.1", 0), Patient)
    server.read_timeout = 0.2
    with serving(server, poll_interval=0.05):
        with socket.create_connection(server.server_address, timeout=10) as silent:
            began = time.monotonic()
            assert silent.recv(100) == b""
            lived = time.monotonic() - began
    assert 0.9 <= lived <= 1.0 + SLACK


def test_read_timeout_is_a_prefork_setting_and_must_be_positive():
    with sockherd.PreforkTCPServer(("127.0.0.1", 0), EchoHandler, read_timeout=5) as server:
        assert server.read_timeout == 5
    for bad in (0, -1):
        with pytest.raises(ValueError, match="read_timeout must be a positive number"):
            sockherd.PreforkTCPServer(("127.0.0.1", 0), EchoHandler, read_timeout=bad)
    assert sockherd.TCPServer.read_timeout is None
    assert sockherd.UnixStreamServer.read_timeout is None


# --- read_timeout None: CPython's behaviour (differential) ------------------------------


def test_without_read_timeout_the_handler_gets_a_plain_blocking_socket(ss, recording):
    server = ss.TCPServer(("127.0.0.1", 0), recording)
    with serving(server, poll_interval=0.05):
        assert request_line(server.server_address, b"plain\n") == b"plain\n"
        wait_until(lambda: len(recording.seen) == 1)
    assert recording.seen == [("timeout", None)]


def test_without_read_timeout_a_silent_client_holds_a_sync_server(ss):
    """The behaviour read_timeout exists to change, identical to CPython's."""
    server = ss.TCPServer(("127.0.0.1", 0), EchoHandler)
    with serving(server, poll_interval=0.05):
        silent = socket.create_connection(server.server_address, timeout=10)
        with socket.create_connection(server.server_address, timeout=10) as normal:
            normal.sendall(b"waiting\n")
            readable, _, _ = select.select([normal], [], [], 3 * READ_TIMEOUT)
            assert readable == []  # held behind the silent client
            silent.close()
            assert normal.recv(100) == b"waiting\n"
