"""The `sockherd serve` command: serves for real, stops cleanly on SIGTERM/SIGINT, and
turns bad input into one actionable line and a non-zero exit status."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import tcp_request

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ECHO = "sockherd.examples.echo:EchoHandler"


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """Start `python -m sockherd serve ...`; return it and its "serving ..." line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "serve", *args],
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stderr.readline()  # blocks until the server listens (or fails)
    return process, line


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, err


def address_of(serving_line: str) -> tuple[str, int]:
    host, port = serving_line.split(" on ")[1].split(" ")[0].rsplit(":", 1)
    return host, int(port)


@pytest.mark.parametrize("mode", ["sync", "threading", "forking"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_echoes_and_stops_cleanly_on_signal(mode, signum):
    process, line = start(ECHO, "--bind", "127.0.0.1:0", "--mode", mode)
    try:
        assert line.startswith(f"sockherd: serving {ECHO} on 127.0.0.1:") and f"({mode})" in line
        assert tcp_request(address_of(line), b"one\ntwo\n") == b"one\ntwo\n"
    finally:
        status, err = stop(process, signum)
    assert status == 0
    assert "sockherd: stopped" in err


def test_serve_on_a_unix_socket(tmp_path):
    path = f"/tmp/sockherd-cli-{os.getpid()}.sock"
    process, line = start(ECHO, "--bind", f"unix:{path}")
    try:
        assert path in line
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            client.sendall(b"over unix\n")
            assert client.recv(100) == b"over unix\n"
    finally:
        stop(process)
        os.unlink(path)


def test_serve_udp():
    process, line = start(
        "sockherd.examples.echo:DatagramEchoHandler", "--bind", "127.0.0.1:0", "--udp"
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"datagram", address_of(line))
            assert client.recv(100) == b"datagram"
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_module:Handler"], "cannot import module 'no_such_module'"),
        (["sockherd.examples.echo:Missing"], "has no attribute 'Missing'"),
        (["sockherd.examples.echo"], "must be MODULE:CLASS"),
        (["sockherd.cli:main"], "is a function, not a request handler class"),
        ([ECHO, "--bind", "localhost"], "is not HOST:PORT"),
        ([ECHO, "--bind", "127.0.0.1:70000"], "between 0 and 65535"),
        ([ECHO, "--bind", "unix:"], "needs a path"),
    ],
)
def test_bad_input_exits_2_with_an_actionable_message(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "sockherd", "serve", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_1_naming_the_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "sockherd", "serve", ECHO, "--bind", f"127.0.0.1:{port}"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"127.0.0.1 port {port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def inherited_listener():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


@pytest.mark.parametrize("mode", ["sync", "prefork"])
def test_serve_on_an_inherited_fd(mode):
    with inherited_listener() as listener:
        fd = listener.fileno()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sockherd",
                "serve",
                ECHO,
                "--bind",
                f"fd:{fd}",
                "--mode",
                mode,
                "--workers",
                "1",
            ],
            cwd=PROJECT_ROOT,
            pass_fds=(fd,),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = process.stderr.readline()
            assert address_of(line) == listener.getsockname()
            assert tcp_request(listener.getsockname(), b"inherited\n") == b"inherited\n"
        finally:
            status, _ = stop(process)
        assert status == 0


def test_serve_on_a_systemd_activated_socket():
    """LISTEN_PID/LISTEN_FDS as systemd sets them: the socket arrives as fd 3."""
    with inherited_listener() as listener:
        fd = listener.fileno()
        launcher = (  # what systemd does between fork and exec
            "import os, sys; os.dup2(int(sys.argv[1]), 3); "
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
            "os.execv(sys.executable, [sys.executable, '-m', 'sockherd', 'serve', sys.argv[2], "
            "'--bind', 'systemd', '--mode', 'prefork', '--workers', '1'])"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", launcher, str(fd), ECHO],
            cwd=PROJECT_ROOT,
            pass_fds=(fd,),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = process.stderr.readline()
            assert address_of(line) == listener.getsockname()
            assert tcp_request(listener.getsockname(), b"activated\n") == b"activated\n"
        finally:
            status, _ = stop(process)
        assert status == 0


def test_systemd_bind_without_activation_says_so():
    result = subprocess.run(
        [sys.executable, "-m", "sockherd", "serve", ECHO, "--bind", "systemd"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "no socket was passed" in result.stderr
