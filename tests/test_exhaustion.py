"""Exhaustion: the supervisor keeps serving what it can when fork() or the fd table fails,
logs one warning per episode, counts every failure in the metrics, and recovers by itself.

The faults are real, not simulated: fork() fails with EAGAIN because the server runs as an
unprivileged uid that no user or process has (`unprivileged_uid()`), whose RLIMIT_NPROC is
lowered to 1 (root is exempt from that limit), and EMFILE comes from lowering the
supervisor's RLIMIT_NOFILE to its lowest free fd.  The server changes its own limits when
the test tells it to (`ServerProcess.command`: a
line on its stdin, applied in its serve loop and acknowledged in its log), so each episode
starts and ends while the server runs.  (The EMFILE handling of a plain server's
accept loop is tested in test_accept_errors.py; this file covers what a prefork supervisor
adds: the dispatch hand-off, the metrics endpoint, the control socket, worker spawning.)
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import time
import urllib.request

import psutil
import pytest
from conftest import wait_until
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, unprivileged_uid

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (to run the server as another uid and change its limits)"
)
linux_only = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd") or not hasattr(resource, "RLIMIT_NPROC"),
    reason="needs Linux (RLIMIT_NPROC, /proc)",
)
pytestmark = [needs_root, linux_only]


def ask(address, line: str, timeout: float = 10.0) -> str:
    """One request; "" if the server closed the connection without a reply."""
    try:
        with socket.create_connection(address, timeout=timeout) as client:
            client.sendall(line.encode() + b"\n")
            client.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := client.recv(4096):
                data += chunk
            return data.decode()
    except TimeoutError:
        raise
    except OSError:  # reset, broken pipe, not connected: closed without a reply
        return ""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def scrape_when(port: int, name: str, value: float, **labels: str) -> str:
    """Scrape until the sum of `name{labels}` is `value`; return that exposition."""

    def reached() -> str | None:
        text = scrape(port)
        return text if total(text, name, **labels) == value else None

    return wait_until(reached, timeout=10, interval=0.05)


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and set(labels.items()) <= set(sample.labels.items())
    )


def pipe_fds(pid: int) -> int:
    """How many pipes process `pid` holds open."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("pipe:")
        except FileNotFoundError:
            pass
    return count


# --- fork() fails: EAGAIN at the process limit --------------------------------------------

FORKING_SERVER = """
class Server(LimitCommands, ReportReady, sockherd.ForkingTCPServer):
    pass

server = Server(("127.0.0.1", 0), prefork_handlers.Commands)
server.metrics_address = ("127.0.0.1", 0)
server.metrics_name = "forking"
drop_to(UID)
stop_on_sigterm(server)
with server:
    server.serve_forever(0.1)
"""


def test_forking_server_closes_connections_while_fork_fails_logs_once_and_recovers():
    attempts = 5
    with ServerProcess(FORKING_SERVER.replace("UID", str(unprivileged_uid()))) as run:
        address, port = run.address, run.metrics_port
        assert ask(address, "echo before").endswith(" before\n")
        run.command("nproc 1")  # its uid may fork no more
        replies = [ask(address, f"echo refused {index}") for index in range(attempts)]
        warning = run.wait_for("fork failed")
        during = scrape(port)  # the loop itself keeps serving: the endpoint needs no fork
        run.command("nproc max")
        recovered_at = time.monotonic()
        after = ask(address, "echo after")
        recovery = time.monotonic() - recovered_at
        ended = run.wait_for("fork works again")
        final = scrape_when(port, "sockherd_requests_total", 2, outcome="ok")  # once reaped
        assert run.stop() == 0
    failures = total(during, "sockherd_fork_failures_total", kind="request", errno="EAGAIN")
    print(
        f"\nforking, fork() failing with EAGAIN: {attempts} connections closed, "
        f"{failures:.0f} failures counted, served after recovery in {recovery * 1000:.1f} ms, "
        f"ok requests {total(final, 'sockherd_requests_total', outcome='ok'):.0f}"
    )
    assert replies == [""] * attempts
    assert after.endswith(" after\n")
    assert failures == attempts
    assert (
        "fork failed (EAGAIN: Resource temporarily unavailable); closing connections until "
        "it works again" in warning
    )
    assert f"fork works again after {attempts} failures" in ended
    assert run.log.count("fork failed") == 1  # one warning for the episode, not one per request
    assert "Traceback" not in run.log and "Exception occurred" not in run.log


PREFORK_WITHOUT_FORKS = """
class Server(LimitCommands, ReportReady, sockherd.PreforkTCPServer):
    pass

server = Server(("127.0.0.1", 0), prefork_handlers.Commands, workers=2, handoff="accept")
server.metrics_address = ("127.0.0.1", 0)
server.metrics_name = "prefork"
drop_to(UID)
hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
resource.setrlimit(resource.RLIMIT_NPROC, (1, hard))  # until the test raises it again
with server:
    server.serve_forever(0.1)
"""


def test_prefork_retries_a_failed_worker_spawn_with_back_off_and_leaks_nothing():
    with ServerProcess(PREFORK_WITHOUT_FORKS.replace("UID", str(unprivileged_uid()))) as run:
        address, port = run.address, run.metrics_port
        warning = run.wait_for("fork of a worker failed")

        def failures() -> float:
            return total(scrape(port), "sockherd_fork_failures_total", kind="worker")

        wait_until(lambda: failures() >= 2, timeout=10, interval=0.05)
        pipes_early = pipe_fds(run.pid)
        wait_until(lambda: failures() >= 4, timeout=10, interval=0.05)
        pipes_later = pipe_fds(run.pid)
        with socket.create_connection(address, timeout=15) as client:
            client.sendall(b"echo queued\n")  # waits in the backlog: no worker yet
            run.command("nproc max")
            recovered_at = time.monotonic()
            reply = client.recv(4096).decode()
            recovery = time.monotonic() - recovered_at
        ended = run.wait_for("fork of a worker works again")
        text = scrape(port)
        scrape_when(port, "sockherd_workers", 2, state="idle")
        assert run.stop() == 0
    counted = total(text, "sockherd_fork_failures_total", kind="worker", errno="EAGAIN")
    print(
        f"\nprefork, worker fork() failing with EAGAIN: {counted:.0f} failed spawns counted, "
        f"pipes held after 2 and 4 failures: {pipes_early}, {pipes_later}, the queued client "
        f"served {recovery:.2f} s after the limit was lifted; {ended.split(': ', 1)[1]}"
    )
    assert reply.endswith(" queued\n")
    assert counted >= 4
    assert pipes_later == pipes_early  # multiprocess's pipes are closed after a failed fork
    assert "(EAGAIN: Resource temporarily unavailable); retrying in 0.1 s" in warning
    assert run.log.count("fork of a worker failed") == 1
    assert "Traceback" not in run.log
    assert total(text, "sockherd_worker_restarts_total", reason="boot_failure") == 0


# --- the fd table is full: EMFILE in the supervisor ----------------------------------------

PREFORK_DISPATCH = """
class Server(LimitCommands, ReportReady, sockherd.PreforkTCPServer):
    pass

server = Server(
    ("127.0.0.1", 0), prefork_handlers.Commands, workers=2, handoff="dispatch",
    control_socket=CONTROL,
)
server.metrics_address = ("127.0.0.1", 0)
server.metrics_name = "dispatch"
with server:
    server.serve_forever(0.1)
"""


def test_prefork_supervisor_out_of_fds_pauses_each_listener_once_and_recovers(tmp_path):
    from sockherd.supervisor.control import send_command

    control = str(tmp_path / "control.sock")
    with ServerProcess(PREFORK_DISPATCH.replace("CONTROL", repr(control))) as run:
        address, port = run.address, run.metrics_port
        scrape_when(port, "sockherd_workers", 2, state="idle")
        assert ask(address, "echo before").endswith(" before\n")
        run.command("nofile full")

        os.kill(run.pid, signal.SIGTTIN)  # one worker more: its socket pair cannot be made
        spawn_warning = run.wait_for("fork of a worker failed")
        client = socket.create_connection(address, timeout=15)
        scraper = socket.create_connection(("127.0.0.1", port), timeout=15)
        operator = socket.socket(socket.AF_UNIX)
        try:
            client.sendall(b"echo queued\n")
            run.wait_for(f"accept() on {address!r} failed")
            scraper.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            run.wait_for("accept() on the metrics endpoint")
            operator.settimeout(15)
            operator.connect(control)
            operator.sendall(b"status\n")
            run.wait_for("accept() on the control socket")

            supervisor = psutil.Process(run.pid)
            cpu_before = sum(supervisor.cpu_times()[:2])
            time.sleep(1.0)  # a measuring window, not synchronisation: nothing may spin
            cpu = sum(supervisor.cpu_times()[:2]) - cpu_before

            run.command("nofile restore")
            recovered_at = time.monotonic()
            reply = client.recv(4096).decode()
            recovery = time.monotonic() - recovered_at
            response = b""
            while chunk := scraper.recv(65536):
                response += chunk
            status = json.loads(operator.makefile().readline())
        finally:
            client.close()
            scraper.close()
            operator.close()
        run.wait_for("works again after", timeout=15, count=4)  # 3 listeners and the spawns
        wait_until(lambda: len(send_command(control, "status")["workers"]) == 3, timeout=15)
        assert ask(address, "echo after").endswith(" after\n")
        assert run.stop() == 0
    head, _, body = response.decode().partition("\r\n\r\n")
    emfile = total(body, "sockherd_accept_errors_total", errno="EMFILE")
    spawns = total(body, "sockherd_fork_failures_total", kind="worker", errno="EMFILE")
    print(
        f"\nprefork dispatch supervisor out of fds for ~1 s: {emfile:.0f} EMFILE accepts, "
        f"{spawns:.0f} failed worker spawns, supervisor CPU in the 1 s window {cpu:.3f} s, "
        f"queued client served {recovery:.2f} s after the limit was restored"
    )
    assert reply.endswith(" queued\n")
    assert head.startswith("HTTP/1.0 200")
    assert status["ok"] is True
    assert emfile >= 3  # the server's socket, the metrics endpoint, the control socket
    assert spawns >= 1
    assert cpu < 0.3
    assert "(EMFILE: Too many open files); retrying in 0.1 s" in spawn_warning
    assert run.log.count("Pausing accepts") == 3  # once per listener for the whole episode
    for listener in (
        f"accept() on {address!r}",
        f"accept() on the metrics endpoint 127.0.0.1:{port}",
        f"accept() on the control socket {control!r}",
    ):
        assert f"{listener} failed: [Errno 24] Too many open files. Pausing accepts" in run.log
        assert f"{listener} works again after" in run.log
    assert "fork of a worker works again after" in run.log
    assert run.log.count("fork of a worker failed") == 1
    assert "Traceback" not in run.log
