"""Prefork x threads (`threads` > 1): a worker serves up to `threads` requests at once.

Clients run in threads of the pytest process, so every server here runs in a subprocess
(`server_process`, or the `sockherd serve` command): a worker forked from the pytest
process while a client thread holds a connection would keep that connection open.
Every test synchronises on what the server reports (its metrics, its replies), never on
a bare sleep: a handler that gathers N requests (`prefork_handlers.Gathering`) answers
only if N of them run at once in one worker.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import listening_address, wait_for_line, wait_until
from server_process import ServerProcess, metric_value, request_line, server_process

import sockherd
from sockherd.supervisor.pool_sizing import host_sizing

pytestmark = pytest.mark.timeout(120)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(PROJECT_ROOT, "tests")
METRICS = {"metrics_address": ["127.0.0.1", 0], "metrics_name": "t"}
LOADED = 30.0  # generous deadlines: the machine may be loaded


def threads_by_state(server: ServerProcess) -> tuple[float, float]:
    """(busy, idle) of sockherd_threads, from a scrape."""
    text = server.scrape()
    return (
        metric_value(text, "sockherd_threads", state="busy"),
        metric_value(text, "sockherd_threads", state="idle"),
    )


def requests_by_outcome(server: ServerProcess) -> dict[str, float]:
    text = server.scrape()
    outcomes = ("ok", "error", "timeout", "aborted")
    return {o: metric_value(text, "sockherd_requests_total", outcome=o) for o in outcomes}


def in_threads(target: Callable[[int], Any], count: int) -> list[Any]:
    """Run target(0..count-1) in `count` threads; their results, or the first exception."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as error:  # reported to the test below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LOADED * 2)
    assert not any(thread.is_alive() for thread in threads), "a client never finished"
    if errors:
        raise errors[0]
    return results


def keep_alive_client(address: tuple[str, int], gather: int, more: int) -> list[tuple[int, str]]:
    """One HTTP/1.1 connection: GET /gather/N, then `more` plain GETs; (status, pid) each."""
    connection = http.client.HTTPConnection(*address, timeout=LOADED * 2)
    try:
        replies = []
        for path in [f"/gather/{gather}"] + ["/"] * more:
            connection.request("GET", path)
            response = connection.getresponse()
            replies.append((response.status, response.read().decode()))
        return replies
    finally:
        connection.close()


@contextmanager
def held(address: tuple[str, int], count: int, tag: str = "h") -> Iterator[list[socket.socket]]:
    """`count` connections, each in a `hold` request of prefork_handlers.Commands; closed
    on exit (release them first with `release`)."""
    clients = [socket.create_connection(address, timeout=LOADED) for _ in range(count)]
    try:
        for index, client in enumerate(clients):
            client.sendall(f"hold {tag}{index}\n".encode())
        yield clients
    finally:
        for client in clients:
            client.close()


def release(clients: list[socket.socket]) -> list[str]:
    """End each held request; the reply lines ("PID tag")."""
    replies = []
    for client in clients:
        client.sendall(b"go\n")
        with client.makefile("rb") as reply:
            replies.append(reply.readline().decode().strip())
    return replies


# --- serving N at once --------------------------------------------------------------------


@pytest.mark.parametrize("handoff", ["accept", "dispatch"])
def test_eight_keep_alive_clients_are_served_at_once_by_one_worker_of_eight_threads(handoff):
    """8 HTTP/1.1 keep-alive clients, 1 worker x 8 threads: the 8 first requests all run at
    once (the handler waits until all 8 are in it), then each connection goes on being
    served; the counters are exact (one request per connection, as a sync worker counts)."""
    settings = {"workers": 1, "threads": 8, "handoff": handoff, "heartbeat_interval": 0.05}
    with server_process("PreforkTCPServer", "prefork_handlers:Gathering", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 8), timeout=LOADED)
        replies = in_threads(lambda _: keep_alive_client(s.address, 8, 5), 8)
        assert all(status == 200 for client in replies for status, _ in client)
        pids = {pid for client in replies for _, pid in client}
        assert len(pids) == 1 and int(pids.pop()) != s.pid
        wait_until(lambda: requests_by_outcome(s)["ok"] == 8, timeout=LOADED)
        text = s.scrape()
        assert metric_value(text, "sockherd_request_duration_seconds_count", server="t") == 8
        assert metric_value(text, "sockherd_request_duration_seconds_bucket", le="+Inf") == 8
        assert threads_by_state(s) == (0, 8)


def test_the_serve_command_runs_threads_and_ctl_status_shows_them(tmp_path):
    """`sockherd serve --threads 8` with the keep-alive HTTP handler: 8 clients at once in
    one worker; `ctl status` sums the threads up, its JSON has them per worker."""
    control = str(tmp_path / "control.sock")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sockherd",
            "serve",
            "prefork_handlers:Gathering",
            "--bind",
            "127.0.0.1:0",
            "--mode",
            "prefork",
            "--workers",
            "1",
            "--threads",
            "8",
            "--control",
            control,
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        env=dict(os.environ, PYTHONPATH=TESTS),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = listening_address(wait_for_line(process.stderr, "listening on"))
        wait_for_line(process.stderr, "1 worker ready")
        replies = in_threads(lambda _: keep_alive_client(address, 8, 2), 8)
        assert all(status == 200 for client in replies for status, _ in client)
        table = ctl(control, "status")
        assert table.returncode == 0, table.stderr
        summary = table.stdout.splitlines()[-2]
        assert summary.endswith(", threads: 0 busy, 8 idle"), summary
        reply = json.loads(ctl(control, "status", "--json").stdout)
        assert [(w["threads"], w["busy_threads"]) for w in reply["workers"]] == [(8, 0)]
    finally:
        process.terminate()
        _, err = process.communicate(timeout=LOADED)
    assert process.returncode == 0, err


def ctl(control: str, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sockherd", "ctl", "--control", control, *words],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=LOADED,
    )


def test_the_echo_handler_serves_more_kept_alive_connections_than_threads():
    """The stream echo handler over 1 worker x 2 threads: 6 connections open at once are
    each echoed twice.  Between its lines a connection waits for its client (parked), so
    it holds no busy thread: all 6 are in hand, none busy, every thread free."""
    settings = {"workers": 1, "threads": 2, "heartbeat_interval": 0.05}
    with server_process("PreforkTCPServer", "sockherd.examples.echo:EchoHandler", settings,
                        **METRICS) as s:  # fmt: skip
        wait_until(lambda: threads_by_state(s) == (0, 2), timeout=LOADED)
        clients = [socket.create_connection(s.address, timeout=LOADED) for _ in range(6)]
        replies = [client.makefile("rb") for client in clients]
        try:
            for round_ in range(2):
                for index, client in enumerate(clients):
                    client.sendall(b"line %d.%d\n" % (index, round_))
                for index, reply in enumerate(replies):
                    assert reply.readline() == b"line %d.%d\n" % (index, round_)

            def all_parked() -> bool:
                text = s.scrape()
                return (
                    metric_value(text, "sockherd_connections_active", server="t") == 6
                    and metric_value(text, "sockherd_threads", state="busy") == 0
                )

            wait_until(all_parked, timeout=LOADED)
        finally:
            for reply, client in zip(replies, clients, strict=True):
                reply.close()
                client.close()
        wait_until(lambda: requests_by_outcome(s)["ok"] == 6, timeout=LOADED)
        assert metric_value(s.scrape(), "sockherd_connections_active", server="t") == 0


def test_worker_connections_bounds_the_connections_a_worker_holds():
    """1 worker x 2 threads, worker_connections 3: 3 parked connections fill the worker,
    so a 4th waits in the listen queue until one of them ends, then is served."""
    settings = {"workers": 1, "threads": 2, "worker_connections": 3, "heartbeat_interval": 0.05}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 2), timeout=LOADED)
        parked = [socket.create_connection(s.address, timeout=LOADED) for _ in range(3)]
        try:
            for index, client in enumerate(parked):
                client.sendall(b"park p%d\n" % index)
            wait_until(
                lambda: metric_value(s.scrape(), "sockherd_connections_active", server="t") == 3,
                timeout=LOADED,
            )
            with socket.create_connection(s.address, timeout=LOADED) as fourth:
                fourth.sendall(b"echo fourth\n")
                wait_until(
                    lambda: (
                        metric_value(s.scrape(), "sockherd_listen_queue_length", server="t") == 1
                    ),
                    timeout=LOADED,
                )
                parked[0].sendall(b"done\n")
                with parked[0].makefile("rb") as reply:
                    assert reply.readline().split()[1] == b"p0"
                with fourth.makefile("rb") as reply:
                    assert reply.readline().split()[1] == b"fourth"
        finally:
            for client in parked:
                client.close()
        wait_until(lambda: requests_by_outcome(s)["ok"] == 4, timeout=LOADED)


@pytest.mark.skipif(
    host_sizing().workers < 2,
    reason="the pool may use one CPU only: there workers do not spread connections",
)
def test_accept_mode_spreads_kept_alive_connections_over_the_workers():
    """2 workers x 2 threads, accept mode: 8 connections parked one after the other end up
    4 and 4 (a worker holding more than another with room leaves new connections to it;
    without that, the worker the kernel wakes first would hold most of them)."""
    settings = {"workers": 2, "threads": 2, "heartbeat_interval": 0.05}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 4), timeout=LOADED)
        clients: list[socket.socket] = []
        try:
            for index in range(8):
                client = socket.create_connection(s.address, timeout=LOADED)
                clients.append(client)
                client.sendall(b"park p%d\n" % index)
                wait_until(
                    lambda: (
                        metric_value(s.scrape(), "sockherd_connections_active", server="t")
                        == len(clients)
                    ),
                    timeout=LOADED,
                )
            pids = []
            for client in clients:
                client.sendall(b"done\n")
                with client.makefile("rb") as reply:
                    pids.append(reply.readline().split()[0])
        finally:
            for client in clients:
                client.close()
        assert sorted(pids.count(pid) for pid in set(pids)) == [4, 4]


def test_a_parked_connection_is_not_timed_by_worker_timeout():
    """worker_timeout measures the handler's work, not a client that takes its time: a
    connection parked for longer than worker_timeout is still served by the same worker."""
    settings = {"workers": 1, "threads": 2, "worker_timeout": 0.5, "heartbeat_interval": 0.05}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 2), timeout=LOADED)
        with socket.create_connection(s.address, timeout=LOADED) as client:
            client.sendall(b"park slow\n")
            wait_until(
                lambda: metric_value(s.scrape(), "sockherd_connections_active", server="t") == 1,
                timeout=LOADED,
            )
            # The supervisor checks the deadline at each housekeeping pass: serve requests
            # (bounded) until three worker_timeouts have passed on the clock.
            deadline = time.monotonic() + 3 * settings["worker_timeout"]
            for _ in range(10_000):
                assert request_line(s.address, b"echo meanwhile\n").split()[1] == b"meanwhile"
                if time.monotonic() > deadline:
                    break
            client.sendall(b"done\n")
            with client.makefile("rb") as reply:
                assert reply.readline().split()[1] == b"slow"
        text = s.scrape()
        assert metric_value(text, "sockherd_worker_restarts_total", reason="timeout") == 0


# --- hand-off: who takes a connection -------------------------------------------------------


def test_accept_mode_a_worker_with_every_thread_busy_leaves_the_queue_to_the_others():
    """2 workers x 2 threads, accept mode: 4 held requests are all in progress at once, two
    per worker (a worker accepting beyond its free threads would queue one unserved)."""
    settings = {"workers": 2, "threads": 2, "heartbeat_interval": 0.05}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 4), timeout=LOADED)
        with held(s.address, 4) as clients:
            wait_until(lambda: threads_by_state(s) == (4, 0), timeout=LOADED)
            pids = [reply.split()[0] for reply in release(clients)]
        assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]


def test_dispatch_hands_a_connection_to_the_worker_with_the_most_idle_threads():
    """2 workers x 3 threads, dispatch: 4 requests held one after the other go 2 and 2 (the
    least recently used credit first would give 3 and 1)."""
    settings = {"workers": 2, "threads": 3, "handoff": "dispatch", "heartbeat_interval": 0.05}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 6), timeout=LOADED)
        clients = []
        try:
            for index in range(4):
                client = socket.create_connection(s.address, timeout=LOADED)
                clients.append(client)
                client.sendall(b"hold d%d\n" % index)
                wait_until(lambda: threads_by_state(s)[0] == len(clients), timeout=LOADED)
            pids = [reply.split()[0] for reply in release(clients)]
        finally:
            for client in clients:
                client.close()
        assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]


# --- limits --------------------------------------------------------------------------------


def test_a_graceful_stop_waits_for_every_threads_request():
    """SIGTERM while 4 threads of a worker hold requests: the supervisor drains, each held
    request still gets its answer, and the server exits 0 with the 4 counted."""
    settings = {"workers": 1, "threads": 4, "heartbeat_interval": 0.05, "graceful_timeout": 60}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 4), timeout=LOADED)
        with held(s.address, 4) as clients:
            wait_until(lambda: threads_by_state(s) == (4, 0), timeout=LOADED)
            s.process.terminate()
            s.wait_for("stopping gracefully", timeout=LOADED)
            assert threads_by_state(s) == (4, 0) and s.process.poll() is None
            replies = release(clients)
        assert s.stop(timeout=LOADED) == 0
    assert sorted(reply.split()[1] for reply in replies) == ["h0", "h1", "h2", "h3"]


def test_a_reload_lets_every_thread_of_an_old_worker_finish():
    """SIGHUP while 3 threads of the one worker hold requests: a new worker serves new
    requests at once, and each held request is answered by the old worker."""
    settings = {"workers": 1, "threads": 4, "heartbeat_interval": 0.05, "graceful_timeout": 60}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 4), timeout=LOADED)
        old = request_line(s.address, b"echo old\n").split()[0]
        with held(s.address, 3) as clients:
            wait_until(lambda: threads_by_state(s)[0] == 3, timeout=LOADED)
            s.process.send_signal(signal.SIGHUP)

            def new_worker_answers() -> bool:
                return request_line(s.address, b"echo new\n").split()[0] != old

            wait_until(new_worker_answers, timeout=LOADED)
            assert {reply.split()[0] for reply in release(clients)} == {old.decode()}
        wait_until(lambda: requests_by_outcome(s)["aborted"] == 0 and threads_by_state(s)[0] == 0)
        assert metric_value(s.scrape(), "sockherd_worker_restarts_total", reason="stopped") == 1


def test_worker_timeout_kills_the_worker_and_counts_its_other_requests_as_aborted():
    """1 worker x 4 threads, worker_timeout 1 s: 3 requests hang; the oldest passes the
    deadline, the worker is killed: 1 timeout and 2 aborted, and a new worker serves."""
    settings = {"workers": 1, "threads": 4, "worker_timeout": 1.0, "kill_grace": 0.3,
                "heartbeat_interval": 0.05}  # fmt: skip
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 4), timeout=LOADED)
        assert request_line(s.address, b"echo before\n").split()[1] == b"before"
        clients = [socket.create_connection(s.address, timeout=LOADED) for _ in range(3)]
        try:
            for client in clients:
                client.sendall(b"hang\n")
            wait_until(lambda: requests_by_outcome(s)["timeout"] == 1, timeout=LOADED)
            for client in clients:  # each connection ends with the worker
                assert client.recv(100) == b""
        finally:
            for client in clients:
                client.close()
        assert requests_by_outcome(s) == {"ok": 1, "error": 0, "timeout": 1, "aborted": 2}
        assert metric_value(s.scrape(), "sockherd_worker_restarts_total", reason="timeout") == 1
        assert request_line(s.address, b"echo after\n").split()[1] == b"after"


@pytest.mark.parametrize("handoff", ["accept", "dispatch"])
def test_max_requests_counts_requests_and_recycles_once_those_in_hand_finish(handoff):
    """1 worker x 4 threads, max_requests 6: 3 held requests and 3 quick ones are the
    worker's 6; a 7th waits, the held ones finish on the first worker, and a fresh worker
    answers the 7th."""
    settings = {"workers": 1, "threads": 4, "max_requests": 6, "heartbeat_interval": 0.05,
                "handoff": handoff}  # fmt: skip
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **METRICS) as s:
        wait_until(lambda: threads_by_state(s) == (0, 4), timeout=LOADED)
        with held(s.address, 3) as clients:
            wait_until(lambda: threads_by_state(s)[0] == 3, timeout=LOADED)
            quick = [request_line(s.address, b"echo q%d\n" % i).split() for i in range(3)]
            first = {pid for pid, _ in quick}
            assert len(first) == 1
            with socket.create_connection(s.address, timeout=LOADED) as seventh:
                seventh.sendall(b"echo seventh\n")
                held_pids = {reply.split()[0].encode() for reply in release(clients)}
                with seventh.makefile("rb") as reply:
                    last_pid, tag = reply.readline().split()
        assert held_pids == first and tag == b"seventh" and last_pid not in first
        wait_until(lambda: requests_by_outcome(s)["ok"] == 7, timeout=LOADED)
        assert metric_value(s.scrape(), "sockherd_worker_restarts_total", reason="recycled") == 1


def test_a_slow_client_holds_no_busy_thread():
    """read_timeout with 1 worker x 2 threads: a client that sends nothing is parked (in
    hand, not busy) until it is cut off; meanwhile the threads serve."""
    settings = {"workers": 1, "threads": 2, "heartbeat_interval": 0.05}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings,
                        read_timeout=1.0, **METRICS) as s:  # fmt: skip
        wait_until(lambda: threads_by_state(s) == (0, 2), timeout=LOADED)
        with socket.create_connection(s.address, timeout=LOADED) as silent:
            wait_until(
                lambda: metric_value(s.scrape(), "sockherd_connections_active", server="t") == 1,
                timeout=LOADED,
            )
            assert threads_by_state(s) == (0, 2)
            assert request_line(s.address, b"echo meanwhile\n").split()[1] == b"meanwhile"
            assert silent.recv(100) == b""  # cut off after read_timeout
        wait_until(lambda: requests_by_outcome(s)["timeout"] == 1, timeout=LOADED)
        assert requests_by_outcome(s)["ok"] == 1


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_bad_threads_values_exit_2_with_one_line(value):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sockherd",
            "serve",
            "sockherd.examples.echo:EchoHandler",
            "--mode",
            "prefork",
            "--threads",
            value,
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=LOADED,
    )
    assert result.returncode == 2, result.stderr
    assert f"threads from --threads: {value!r} is not valid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_threads_from_the_environment_exits_2():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sockherd",
            "serve",
            "sockherd.examples.echo:EchoHandler",
            "--mode",
            "prefork",
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        env=dict(os.environ, SOCKHERD_THREADS="0"),
        capture_output=True,
        text=True,
        timeout=LOADED,
    )
    assert result.returncode == 2, result.stderr
    assert "SOCKHERD_THREADS" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True])
def test_bad_threads_keyword_is_refused(value):
    with pytest.raises((ValueError, TypeError), match="threads"):
        sockherd.PreforkTCPServer(("127.0.0.1", 0), sockherd.StreamRequestHandler, threads=value)


def test_bad_threads_class_attribute_is_refused():
    class Server(sockherd.PreforkTCPServer):
        threads = 0

    with pytest.raises(ValueError, match="threads must be at least 1, not 0"):
        Server(("127.0.0.1", 0), sockherd.StreamRequestHandler)


@pytest.mark.parametrize("source", ["toml", "environment"])
def test_the_command_takes_threads_from_the_file_or_the_environment(tmp_path, source):
    control = str(tmp_path / "control.sock")
    config = tmp_path / "sockherd.toml"
    config.write_text('mode = "prefork"\nworkers = 1\nbind = "127.0.0.1:0"\n')
    if source == "toml":
        config.write_text(config.read_text() + "threads = 3\n")
    env = dict(os.environ, SOCKHERD_THREADS="3") if source == "environment" else None
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sockherd",
            "serve",
            "sockherd.examples.echo:EchoHandler",
            "--config",
            str(config),
            "--control",
            control,
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_line(process.stderr, "1 worker ready")
        reply = json.loads(ctl(control, "status", "--json").stdout)
        assert [w["threads"] for w in reply["workers"]] == [3]
    finally:
        process.terminate()
        process.communicate(timeout=LOADED)
    assert process.returncode == 0


def test_threads_default_is_one_and_keeps_the_sync_worker():
    from sockherd.workers.threaded_worker import ThreadedWorker
    from sockherd.workers.worker_kinds import make_worker
    from sockherd.workers.worker_loop import Worker

    assert sockherd.PreforkMixIn.threads == 1

    stub = _PoolStub()
    read, write = socket.socketpair()
    try:
        args = (0, None, read, "accept", 0.5)
        stub.threads = 1
        one = make_worker(stub, *args)
        assert type(one) is Worker
        stub.threads = 3
        three = make_worker(stub, *args)
        assert type(three) is ThreadedWorker and three.threads == 3
        for worker in (one, three):
            os.close(worker.wake_read)
            os.close(worker.wake_write)
    finally:
        read.close()
        write.close()


class _PoolStub:
    """The settings `make_worker` and `Worker` read from a server."""

    threads = 2
    max_requests = max_requests_jitter = 0
    max_worker_memory = None


@contextmanager
def _workers_on_a_scoreboard() -> Iterator[tuple[Any, list[Any], socket.socket]]:
    """A real two-slot scoreboard (both slots serving, 2 threads each), a list that
    collects the workers a test builds (their wake-up pipes are closed after), and a
    channel end to build them with."""
    from sockherd.workers.lifecycle import WorkerState
    from sockherd.workers.scoreboard import Scoreboard

    board = Scoreboard(2)
    read, write = socket.socketpair()
    workers: list[Any] = []
    try:
        for index in (0, 1):
            board.claim(0)
            board.set_state(index, WorkerState.IDLE)
            board.slots[index].threads = 2
        yield board, workers, read
    finally:
        for worker in workers:
            os.close(worker.wake_read)
            os.close(worker.wake_write)
        read.close()
        write.close()
        board.close()


@pytest.mark.parametrize("usable_cpus", [0, 1, 2])
def test_a_worker_leaves_new_connections_to_one_holding_fewer_unless_on_one_cpu(usable_cpus):
    """`_fair_to_take`: past N connections held, a worker leaves the next one to a serving
    worker with room that holds fewer; where the pool may use one CPU only it takes it
    (one core runs one GIL at a time wherever the connections are).  0: not known."""
    from sockherd.workers.worker_kinds import make_worker

    with _workers_on_a_scoreboard() as (board, workers, channel):
        worker = make_worker(_PoolStub(), 0, board, channel, "accept", 0.5, usable_cpus=usable_cpus)
        workers.append(worker)
        worker.held = 2  # N held; the other worker holds none and has room
        assert worker._fair_to_take() is (usable_cpus == 1)
        worker.held = 1  # below N: it always takes
        assert worker._fair_to_take()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_twin_keeps_its_kind_and_settings(threads):
    """`Worker.twin()`, what a refork template forks: a worker of the same class and
    settings for another slot and channel (a threaded one: its threads, connection limit
    and usable CPUs)."""
    from sockherd.workers.worker_kinds import make_worker

    stub = _PoolStub()
    stub.threads = threads
    with _workers_on_a_scoreboard() as (board, workers, channel):
        worker = make_worker(stub, 0, board, channel, "accept", 0.5, usable_cpus=1)
        workers.append(worker)
        twin = worker.twin(1, channel)
        workers.append(twin)
        assert type(twin) is type(worker)
        assert (twin.index, twin.channel, twin.heartbeat_interval) == (1, channel, 0.5)
        assert twin.own_settings() == worker.own_settings()
        if threads > 1:
            assert twin.own_settings() == {"threads": 2, "connections": 1000, "usable_cpus": 1}


def test_a_threaded_worker_with_a_free_thread_counts_as_idle_for_autoscaling():
    """The scoreboard's `can_take_request`: IDLE, or BUSY with a thread free (threaded)."""
    from sockherd.workers.lifecycle import WorkerState
    from sockherd.workers.scoreboard import Scoreboard

    board = Scoreboard(2)
    try:
        for index in (0, 1):
            board.claim(0)
            board.set_state(index, WorkerState.IDLE)
        board.slots[1].threads = 4
        assert board.can_take_request(0) and board.can_take_request(1)
        board.set_state(0, WorkerState.BUSY)  # a sync worker: busy is full
        board.set_state(1, WorkerState.BUSY)
        board.slots[1].busy_threads = 3
        assert not board.can_take_request(0) and board.can_take_request(1)
        board.slots[1].busy_threads = 4
        assert not board.can_take_request(1)
    finally:
        board.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_a_dispatchers_credits_can_be_carried_to_a_new_one(threads):
    """`credit_list()` then `worker_idle()` each (what an in-place upgrade carries)."""
    from sockherd.supervisor.dispatcher import Dispatcher

    old = Dispatcher(None, threads)  # type: ignore[arg-type]
    for index in (2, 0, 2, 1, 2):
        old.worker_idle(index)
    new = Dispatcher(None, threads)  # type: ignore[arg-type]
    for index in old.credit_list():
        new.worker_idle(index)
    assert new.credit_list() == old.credit_list()
    assert sorted(new.credit_list()) == [0, 1, 2, 2, 2]
    assert (new.free, list(new.credits)) == (old.free, list(old.credits))
