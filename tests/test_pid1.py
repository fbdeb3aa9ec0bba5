"""The supervisor as PID 1, the way a container runs it (a new PID namespace, no tini).

PID 1 has no default signal actions and inherits every orphan of its namespace:
sockherd must handle TERM itself (draining requests in flight) and reap the
grandchildren that handlers abandon.  `unshare --pid --fork --mount-proc` gives
the same situation without a Docker engine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest
from conftest import listening_address, tcp_request, wait_for_line, wait_until

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(PROJECT_ROOT, "tests")


def can_unshare() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not can_unshare(), reason="needs Linux `unshare --pid --fork --mount-proc` (root)"
)


def start_as_pid1(*args: str):
    env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + PROJECT_ROOT)
    launcher = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
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
    line = wait_for_line(launcher.stderr, "listening on")
    supervisor = wait_until(lambda: psutil.Process(launcher.pid).children())[0]
    return launcher, supervisor, listening_address(line)


def tree(process: psutil.Process) -> list[psutil.Process]:
    return process.children(recursive=True)


def stop(launcher: subprocess.Popen, supervisor: psutil.Process) -> int:
    supervisor.send_signal(signal.SIGTERM)
    try:
        return launcher.wait(30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate(timeout=30)


def test_pid1_reaps_the_grandchildren_handlers_abandon():
    launcher, supervisor, address = start_as_pid1("--workers", "2")
    try:
        wait_until(lambda: len(tree(supervisor)) == 2)
        for _ in range(3):
            tcp_request(address, b"orphan 0.2\n")  # each leaves a grandchild to PID 1

        def only_workers_left():
            processes = tree(supervisor)
            try:
                zombies = [p for p in processes if p.status() == psutil.STATUS_ZOMBIE]
            except psutil.NoSuchProcess:
                return False  # one was reaped while we looked: look again
            return len(processes) == 2 and not zombies

        wait_until(only_workers_left, timeout=10)
    finally:
        status = stop(launcher, supervisor)
    assert status == 0


def test_pid1_drains_requests_in_flight_on_term_and_exits_0():
    launcher, supervisor, address = start_as_pid1("--workers", "2", "--graceful-timeout", "10")
    clients = []
    try:
        wait_until(lambda: len(tree(supervisor)) == 2)
        for index in range(5):
            client = socket.create_connection(address, timeout=20)
            client.sendall(f"sleep 0.3 {index}\n".encode())
            client.shutdown(socket.SHUT_WR)
            clients.append(client)
        supervisor.send_signal(signal.SIGTERM)
        replies = []
        for client in clients:
            replies.append(client.recv(100).decode())
        status = launcher.wait(30)
    finally:
        for client in clients:
            client.close()
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate(timeout=30)
    assert status == 0
    assert all(reply.endswith(f" {index}\n") for index, reply in enumerate(replies)), replies
