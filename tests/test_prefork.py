"""PreforkTCPServer and friends: the same handlers, served by a supervised worker pool.

In-process tests run the supervisor's serve_forever() in a thread (so signals are
not installed; operator actions are exercised in `sockherd serve` subprocesses).
What a pool shares with the other server kinds (the request path, the serve loop,
handlers, the class surface) is tested over every kind in the foundation's files
(server_kinds.py); this file tests what only a pool does.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import (
    listening_address,
    pool_of,
    serving,
    tcp_request,
    wait_for_line,
    wait_until,
    zombie_children,
)
from prefork_handlers import BrokenSetupServer, Commands
from server_kinds import KIND, POLL, Recorder, WrappedConnection, recv_all

import sockherd
from sockherd.examples.echo import DatagramEchoHandler, EchoHandler

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(PROJECT_ROOT, "tests")
HANDOFFS = ["accept", "dispatch"]


def ask(address, line: str, timeout: float = 10.0) -> str:
    return tcp_request(address, (line + "\n").encode(), timeout=timeout).decode()


def live_workers(server) -> list[dict]:
    return [w for w in server.worker_stats() if w["state"] in ("idle", "busy")]


def run_clients(address, clients: int, requests_each: int, line: str = "echo x") -> list:
    """`clients` threads each send `requests_each` requests; return the failures."""
    failures = []

    def client(number):
        for index in range(requests_each):
            try:
                reply = ask(address, f"{line}{number}-{index}")
                if not reply.endswith(f"{number}-{index}\n"):
                    failures.append(("bad reply", reply))
            except OSError as error:
                failures.append(("error", repr(error)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return failures


# --- serving ---------------------------------------------------------------------


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_pool_serves_concurrent_clients_and_counts_every_request(handoff):
    server = sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, workers=3, handoff=handoff)
    with serving(server):
        assert run_clients(server.server_address, clients=6, requests_each=20) == []
        wait_until(lambda: sum(w["requests"] for w in server.worker_stats()) == 120)
        pids = {w["pid"] for w in server.worker_stats()}
        assert len(pids) == 3 and os.getpid() not in pids
    assert zombie_children() == []


def test_supervisor_never_runs_request_code():
    server = sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, workers=2)
    with serving(server):
        served_by = {int(ask(server.server_address, "echo a").split()[0]) for _ in range(10)}
        assert os.getpid() not in served_by


def test_udp_workers_read_the_shared_socket():
    server = sockherd.PreforkUDPServer(("127.0.0.1", 0), DatagramEchoHandler, workers=2)
    with serving(server):
        wait_until(lambda: len(live_workers(server)) == 2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for index in range(10):
                client.sendto(b"datagram %d" % index, server.server_address)
                assert client.recv(100) == b"datagram %d" % index


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_unix_stream_pool(handoff):
    path = f"/tmp/sockherd-prefork-{os.getpid()}.sock"
    server = sockherd.PreforkUnixStreamServer(path, EchoHandler, workers=2, handoff=handoff)
    try:
        with serving(server):
            for index in range(5):
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(path)
                    client.sendall(b"line %d\n" % index)
                    client.shutdown(socket.SHUT_WR)
                    assert client.recv(100) == b"line %d\n" % index
    finally:
        os.unlink(path)


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_handler_exception_goes_to_handle_error_in_the_worker(handoff, capfd):
    server = sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, workers=1, handoff=handoff)
    with serving(server):
        assert ask(server.server_address, "raise") == ""
        assert ask(server.server_address, "echo still-serving").endswith("still-serving\n")
        wait_until(lambda: server.worker_stats()[0]["errors"] == 1)
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request from" in err
    assert "ValueError: the handler failed on purpose" in err


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_verify_request_false_closes_the_connection(handoff):
    class Refusing(sockherd.PreforkTCPServer):
        def verify_request(self, request, client_address):
            return False

    server = Refusing(("127.0.0.1", 0), Commands, workers=1, handoff=handoff)
    with serving(server):
        assert ask(server.server_address, "echo nobody") == ""


def test_shutdown_stops_every_worker_before_returning():
    server = sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, workers=3)
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    wait_until(lambda: len(live_workers(server)) == 3)
    pids = [w["pid"] for w in server.worker_stats()]
    server.shutdown()
    assert not any(psutil.pid_exists(pid) for pid in pids)
    loop.join(5)
    server.server_close()


def test_handle_request_explains_that_the_pool_needs_serve_forever():
    with sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, workers=1) as server:
        with pytest.raises(RuntimeError, match="call serve_forever"):
            server.handle_request()


def test_unknown_setting_names_the_known_ones():
    with pytest.raises(TypeError, match="unknown setting.*'wrokers'.*known: workers"):
        sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, wrokers=2)


def test_bad_handoff_is_refused():
    with pytest.raises(ValueError, match="handoff must be one of"):
        sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, handoff="roundrobin")


# --- the socketserver path, where a pool differs ------------------------------------

NO_RCVTIMEO = bytes(16)  # struct timeval {0, 0}


def wrapping_server(recorder: Recorder, handler: type, handoff: str) -> sockherd.PreforkTCPServer:
    """A one-worker pool whose get_request() wraps each connection (as TLS servers do)."""

    class WrappingServer(sockherd.PreforkTCPServer):
        def get_request(self):
            connection, address = super().get_request()
            return WrappedConnection(connection, recorder), address

    return KIND[f"prefork-{handoff}"].server(("127.0.0.1", 0), handler, cls=WrappingServer)


def test_dispatch_refuses_a_wrapped_connection_with_an_actionable_error(recorder, caplog):
    """Dispatch mode can pass only a socket's fd, not the object get_request() wrapped it in
    (a worker would read TLS records as plain bytes): the supervisor refuses the connection,
    closes it without running the handler, and says to use handoff='accept'."""

    class Handler(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            recorder.add("handle")

    server = wrapping_server(recorder, Handler, "dispatch")
    with serving(server, POLL) as loop:
        assert tcp_request(server.server_address) == b""
        wait_until(lambda: "wrapper closed" in recorder.texts())
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "handoff='accept'" in errors[0]
    assert recorder.by_place(loop) == {"loop": ["wrapper closed"]}


def test_connection_from_a_wrapping_get_request_has_no_receive_timeout(recorder):
    """The listener's heartbeat receive timeout (SO_RCVTIMEO, accept mode) must not reach the
    handler's connection, also when get_request() wraps it: a client slower than
    heartbeat_interval would otherwise make the handler's recv() fail with EAGAIN."""

    class Handler(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            rcvtimeo = self.request.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
            self.request.sendall(rcvtimeo)

    server = wrapping_server(recorder, Handler, "accept")
    # Connect once the listener has its heartbeat timeout, as any client of a running pool
    # does (earlier connections were cloned from the listener before it was set).
    with KIND["prefork-accept"].serving(server):
        reply = tcp_request(server.server_address, b"")
    assert reply == NO_RCVTIMEO


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_a_worker_stops_after_a_sigterm_that_arrived_while_its_handler_ran_python_code(
    recorder, handoff, monkeypatch
):
    """shutdown() while a CPU-bound request runs: the worker gets its SIGTERM in Python code,
    finishes the request, then exits promptly (not after graceful_timeout and a SIGKILL).

    On CPython 3.13.0 a process forked from a non-main thread (workers are forked from the
    serve_forever() thread) does not run a Python signal handler for a signal that lands
    in Python code until something calls PyErr_CheckSignals(); the worker's loops never
    do, so a stop must not depend on the SIGTERM handler alone.
    """
    from sockherd.supervisor import worker_pool

    released = mmap.mmap(-1, 1)  # anonymous shared memory: the worker sees the test's write
    sigterm_sent = threading.Event()
    real_signal = worker_pool.send_signal

    def signal_and_tell(pid: int, signum: int) -> None:
        real_signal(pid, signum)
        if signum == signal.SIGTERM:
            sigterm_sent.set()

    monkeypatch.setattr(worker_pool, "send_signal", signal_and_tell)

    class Spinning(sockherd.BaseRequestHandler):
        def handle(self) -> None:
            recorder.add("spinning")
            deadline = time.monotonic() + 10
            while released[0] == 0 and time.monotonic() < deadline:
                pass  # CPU-bound Python: no syscall a signal could interrupt
            self.request.send(b"done")  # not sendall(), which runs pending signal handlers

    kind = KIND[f"prefork-{handoff}"]
    server = kind.server(("127.0.0.1", 0), Spinning, graceful_timeout=2.5)
    loop = threading.Thread(target=server.serve_forever, args=(POLL,), name="serve_forever")
    loop.start()
    stopper = threading.Thread(target=server.shutdown, name="shutdown")
    try:
        with socket.create_connection(server.server_address, timeout=10) as client:
            client.shutdown(socket.SHUT_WR)
            wait_until(lambda: "spinning" in recorder.texts())
            # the worker may serve before the loop thread has recorded its fork
            wait_until(lambda: len(kind.worker_pids(server)) == 1)
            (worker,) = kind.worker_pids(server)
            stopper.start()
            assert sigterm_sent.wait(5)

            def delivered() -> bool:  # no longer pending: the worker has taken the signal
                with open(f"/proc/{worker}/status") as status:
                    fields = dict(line.split(":", 1) for line in status)
                pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
                return not pending & (1 << (signal.SIGTERM - 1))

            wait_until(delivered)
            released[0] = 1
            reply = recv_all(client)
            finished = time.monotonic()
        stopper.join(10)
        stopped_after = time.monotonic() - finished
    finally:
        released[0] = 1
        if stopper.ident is None:
            server.shutdown()
        stopper.join(10)
        loop.join(10)
        server.server_close()
        released.close()
    assert reply == b"done"
    assert stopped_after < 1.5  # a heartbeat or two, not graceful_timeout


# --- supervision -----------------------------------------------------------------


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_killed_worker_is_replaced_and_only_its_request_fails(handoff):
    server = sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, workers=4, handoff=handoff)
    with serving(server):
        wait_until(lambda: len(live_workers(server)) == 4)
        victim = server.worker_stats()[0]["pid"]
        result = {}

        def load():
            result["failures"] = run_clients(
                server.server_address, clients=8, requests_each=40, line="sleep 0.002 "
            )

        loader = threading.Thread(target=load)
        loader.start()
        wait_until(lambda: sum(w["requests"] for w in server.worker_stats()) > 40)
        os.kill(victim, signal.SIGKILL)
        loader.join(60)
        failures = result["failures"]
        assert len(failures) <= 1, failures  # at most the one request the victim held
        wait_until(lambda: len(live_workers(server)) == 4)
        assert victim not in {w["pid"] for w in server.worker_stats()}
        assert zombie_children() == []
        assert pool_of(server).restarts["crashed"] == 1
        print(f"\n{handoff}: {len(failures)} failed request(s) of 320 with a worker SIGKILLed")


def test_hung_handler_is_aborted_with_a_traceback_then_replaced(capfd, caplog):
    server = sockherd.PreforkTCPServer(
        ("127.0.0.1", 0), Commands, workers=1, worker_timeout=0.5, kill_grace=0.5
    )
    with serving(server):
        wait_until(lambda: len(live_workers(server)) == 1)
        hung = server.worker_stats()[0]["pid"]
        assert ask(server.server_address, "hang", timeout=10) == ""  # closed when killed
        wait_until(lambda: live_workers(server) and live_workers(server)[0]["pid"] != hung)
        assert ask(server.server_address, "echo after").endswith("after\n")
        assert pool_of(server).restarts["timeout"] == 1
        assert pool_of(server).exits["signal SIGABRT"] == 1
    err = capfd.readouterr().err
    assert "Fatal Python error: Aborted" in err
    assert "in handle" in err and "prefork_handlers.py" in err  # the handler's own frame
    assert "sending SIGABRT for a traceback" in caplog.text


def test_worker_boot_failure_backs_off_instead_of_spinning(caplog):
    server = BrokenSetupServer(("127.0.0.1", 0), Commands, workers=2)
    with serving(server):
        wait_until(lambda: pool_of(server).restarts.get("boot_failure", 0) >= 4, timeout=10)
    delays = [
        record.getMessage().rsplit("next start in ", 1)[1]
        for record in caplog.records
        if "died while booting" in record.getMessage()
    ]
    assert delays[:4] == ["0.1 s", "0.2 s", "0.4 s", "0.8 s"]
    assert "worker_setup() raised" in caplog.text


def test_max_requests_recycles_workers_without_losing_requests():
    server = sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, workers=1, max_requests=5)
    with serving(server):
        pids = {int(ask(server.server_address, f"echo {i}").split()[0]) for i in range(20)}
        assert len(pids) >= 4
        wait_until(lambda: pool_of(server).restarts["recycled"] >= 3)


def test_a_worker_over_max_worker_memory_is_recycled_after_its_request():
    server = sockherd.PreforkTCPServer(
        ("127.0.0.1", 0), Commands, workers=1, max_worker_memory=200 * 1024 * 1024
    )
    with serving(server):
        first = int(ask(server.server_address, "hoard 50").split()[0])
        assert int(ask(server.server_address, "echo small").split()[0]) == first
        assert int(ask(server.server_address, "hoard 250").split()[0]) == first  # answered
        wait_until(lambda: pool_of(server).restarts["recycled"] == 1)
        assert int(ask(server.server_address, "echo fresh").split()[0]) != first


@pytest.mark.timeout(120)
@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("handoff", HANDOFFS)
def test_fairness_with_64_concurrent_clients(handoff, threads):
    """4 workers, 64 clients: the busiest worker serves at most 1.5x the least busy (dispatch;
    with threads, dispatch hands each connection to the worker with the most free threads)."""
    server = sockherd.PreforkTCPServer(
        ("127.0.0.1", 0), Commands, workers=4, handoff=handoff, threads=threads
    )
    with serving(server):
        wait_until(lambda: len(live_workers(server)) == 4)
        assert run_clients(server.server_address, 64, 10, line="sleep 0.002 ") == []
        wait_until(lambda: sum(w["requests"] for w in server.worker_stats()) == 640)
        counts = sorted(w["requests"] for w in server.worker_stats())
    ratio = counts[-1] / counts[0]
    print(f"\n{handoff} x{threads}: requests per worker {counts}, busiest/least busy {ratio:.2f}")
    if handoff == "dispatch":
        assert ratio <= 1.5


# --- operator signals, on a real `sockherd serve` process ---------------------------


@contextlib.contextmanager
def supervisor(*args: str):
    env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + PROJECT_ROOT)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sockherd",
            "serve",
            "prefork_handlers:Commands",
            "--bind",
            "127.0.0.1:0",
            "--mode",
            "prefork",
            *args,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = wait_for_line(process.stderr, "listening on")
        yield process, listening_address(line)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def worker_pids(process) -> set[int]:
    return {child.pid for child in psutil.Process(process.pid).children()}


def continuous_load(address, stop: threading.Event, clients: int = 4):
    """Clients loop until `stop`; returns (counts, failures) lists filled as they go."""
    counts, failures = [0], []

    def client():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if ask(address, "echo ok").endswith("ok\n"):
                    counts[0] += 1
                else:
                    failures.append("short reply")
            except OSError as error:
                failures.append(repr(error))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads, counts, failures


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_hup_reloads_every_worker_without_a_failed_request(handoff):
    with supervisor("--workers", "3", "--handoff", handoff) as (process, address):
        wait_until(lambda: len(worker_pids(process)) == 3)
        old = worker_pids(process)
        stop = threading.Event()
        threads, counts, failures = continuous_load(address, stop)
        wait_until(lambda: counts[0] > 50)
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: not (worker_pids(process) & old) and len(worker_pids(process)) == 3)
        served_before = counts[0]
        wait_until(lambda: counts[0] > served_before + 50)
        stop.set()
        for thread in threads:
            thread.join(30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert failures == []
    print(f"\n{handoff}: {counts[0]} requests across a HUP reload, 0 failed")


def test_ttin_ttou_scale_the_pool_under_load_without_failures():
    with supervisor("--workers", "2") as (process, address):
        wait_until(lambda: len(worker_pids(process)) == 2)
        stop = threading.Event()
        threads, counts, failures = continuous_load(address, stop)
        process.send_signal(signal.SIGTTIN)
        wait_until(lambda: len(worker_pids(process)) == 3)
        process.send_signal(signal.SIGTTOU)
        wait_until(lambda: len(worker_pids(process)) == 2)
        process.send_signal(signal.SIGTTOU)  # one at a time: pending signals of a kind merge
        wait_until(lambda: len(worker_pids(process)) == 1)
        served = counts[0]
        wait_until(lambda: counts[0] > served + 20)
        stop.set()
        for thread in threads:
            thread.join(30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert failures == []


@pytest.mark.parametrize("handoff", HANDOFFS)
def test_term_lets_every_accepted_request_finish_then_exits_0(handoff):
    with supervisor("--workers", "2", "--handoff", handoff, "--graceful-timeout", "10") as (
        process,
        address,
    ):
        wait_until(lambda: len(worker_pids(process)) == 2)
        replies = []
        clients = []
        for index in range(6):  # 2 in the workers, 4 waiting for a worker
            client = socket.create_connection(address, timeout=20)
            client.sendall(f"sleep 0.3 {index}\n".encode())
            client.shutdown(socket.SHUT_WR)
            clients.append(client)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        for client in clients:
            with client:
                replies.append(client.recv(100).decode())
        status = process.wait(30)
        took = time.monotonic() - began
    assert status == 0
    assert all(reply.endswith(f" {i}\n") for i, reply in enumerate(replies)), replies
    assert took < 10
    print(f"\n{handoff}: TERM with 6 requests in flight: all answered, exit 0 in {took:.2f} s")


def test_supervisor_adopts_and_reaps_a_grandchild_a_handler_abandoned():
    """As a Linux subreaper (or PID 1) the supervisor adopts orphans instead of init, and reaps."""
    if not sys.platform.startswith("linux"):
        pytest.skip("child subreapers are a Linux feature")
    with supervisor("--workers", "1") as (process, address):
        grandchild = int(ask(address, "orphan 0.5").split()[1])
        assert psutil.Process(grandchild).ppid() == process.pid
        wait_until(lambda: not psutil.pid_exists(grandchild))  # exited and reaped, no zombie
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


# --- the control socket ---------------------------------------------------------------


@pytest.fixture
def control_path():
    path = f"/tmp/sockherd-control-{os.getpid()}.sock"
    yield path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def test_control_socket_status_scale_reload_and_stop(control_path):
    from sockherd.supervisor.control import send_command

    with supervisor("--workers", "2", "--control", control_path) as (process, address):
        wait_until(lambda: os.path.exists(control_path))
        assert oct(os.stat(control_path).st_mode & 0o777) == "0o600"
        wait_until(lambda: len(send_command(control_path, "status")["workers"]) == 2)
        ask(address, "echo counted")
        status = send_command(control_path, "status")
        assert status["ok"] and status["desired"] == 2 and status["requests_total"] == 1
        assert send_command(control_path, "scale 3") == {"ok": True, "desired": 3}
        wait_until(lambda: len(worker_pids(process)) == 3)
        assert send_command(control_path, "scale -2") == {"ok": True, "desired": 1}
        wait_until(lambda: len(worker_pids(process)) == 1)
        old = worker_pids(process)
        assert send_command(control_path, "reload") == {"ok": True, "generation": 1}
        wait_until(lambda: worker_pids(process) and not (worker_pids(process) & old))
        cli = subprocess.run(
            [sys.executable, "-m", "sockherd", "ctl", "--control", control_path, "stop"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0 and cli.stdout == "ok\n"
        assert process.wait(30) == 0
    assert not os.path.exists(control_path)


def test_control_socket_explains_a_bad_command(control_path):
    from sockherd.supervisor.control import send_command

    with supervisor("--workers", "1", "--control", control_path) as (process, _address):
        wait_until(lambda: os.path.exists(control_path))
        reply = send_command(control_path, "restart-everything")
        assert reply["ok"] is False
        assert "commands: status, scale N, reload, refork, upgrade, stop" in reply["error"]
        reply = send_command(control_path, "scale lots")
        assert reply["ok"] is False and "scale needs a number" in reply["error"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_a_silent_control_client_does_not_stall_the_supervisor(control_path):
    from sockherd.supervisor.control import send_command

    with supervisor("--workers", "1", "--control", control_path) as (process, address):
        wait_until(lambda: os.path.exists(control_path))
        with socket.socket(socket.AF_UNIX) as silent:
            silent.connect(control_path)  # connects, never sends a command
            assert send_command(control_path, "status", timeout=5)["ok"]
            assert ask(address, "echo served").endswith("served\n")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_control_socket_in_use_is_refused_with_a_clear_message(control_path):
    with supervisor("--workers", "1", "--control", control_path) as (process, _address):
        wait_until(lambda: os.path.exists(control_path))
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "sockherd",
                "serve",
                "sockherd.examples.echo:EchoHandler",
                "--bind",
                "127.0.0.1:0",
                "--mode",
                "prefork",
                "--workers",
                "1",
                "--control",
                control_path,
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 2
        assert "in use by another supervisor" in second.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
