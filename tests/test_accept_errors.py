"""Accept errors: harmless races stay silent (as in CPython); fd exhaustion is reported once
and backed off instead of spinning the loop, and the waiting connection is still served."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import serving, tcp_request

import sockherd

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a subprocess: fills the fd table so accept() fails with EMFILE for WINDOW
# seconds while a client waits in the backlog, then frees the fds.
EMFILE_SCENARIO = textwrap.dedent(
    """
    import json, logging, os, socket, sys, threading, time
    sys.path.insert(0, {root!r})
    import {module} as ss
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    WINDOW = 1.0
    iterations = 0

    class Reply(ss.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"served")

    class Server(ss.TCPServer):
        def service_actions(self):
            global iterations
            iterations += 1

    server = Server(("127.0.0.1", 0), Reply)
    loop = threading.Thread(target=server.serve_forever, args=(0.5,))
    loop.start()
    while not iterations:                                       # the loop is running
        time.sleep(0.01)
    client = socket.socket()
    client.settimeout(10)
    spare = []
    try:
        while True:
            spare.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass                                                    # EMFILE: the table is full
    cpu_before = time.process_time()
    iterations = 0
    client.connect(server.server_address)                       # waits in the backlog
    deadline = time.monotonic() + WINDOW
    while time.monotonic() < deadline:                          # bounded measuring window
        time.sleep(0.05)
    cpu = time.process_time() - cpu_before
    spun = iterations
    for fd in spare:
        os.close(fd)
    reply = client.recv(100)
    server.shutdown()
    loop.join()
    server.server_close()
    client.close()
    print(json.dumps({{"iterations": spun, "cpu": cpu, "reply": reply.decode()}}))
    """
)


def run_emfile_scenario(module: str) -> tuple[dict, str]:
    script = EMFILE_SCENARIO.format(root=PROJECT_ROOT, module=module)
    # A low fd limit keeps the fill loop short.
    prelude = "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_emfile_backs_off_logs_once_and_serves_the_waiting_client():
    figures, stderr = run_emfile_scenario("sockherd")
    print(f"\nsockherd under EMFILE for 1 s: {figures}")
    assert figures["reply"] == "served"
    assert figures["iterations"] < 40
    assert figures["cpu"] < 0.3
    assert stderr.count("Pausing accepts") == 1
    assert "Too many open files" in stderr
    assert stderr.count("works again") == 1


def test_stock_socketserver_spins_on_emfile():
    """The CPython behaviour sockherd fixes: the loop spins silently, burning a core."""
    figures, stderr = run_emfile_scenario("socketserver")
    print(f"\nsocketserver under EMFILE for 1 s: {figures}")
    assert figures["reply"] == "served"
    assert figures["iterations"] > 1000
    assert stderr == ""


class FailingAccept(sockherd.TCPServer):
    """get_request() fails with a scripted errno before it starts accepting."""

    failures: list[int] = []

    def get_request(self):
        if self.failures:
            raise OSError(self.failures.pop(0), os.strerror(errno.ECONNABORTED))
        return super().get_request()


def test_harmless_accept_errors_are_silent_but_counted(caplog):
    caplog.set_level(logging.DEBUG, logger="sockherd")
    server = type("S", (FailingAccept,), {"failures": [errno.ECONNABORTED, errno.EAGAIN]})(
        ("127.0.0.1", 0), sockherd.StreamRequestHandler
    )
    with serving(server):
        tcp_request(server.server_address)
        tcp_request(server.server_address)
        tcp_request(server.server_address)
    assert caplog.records == []
    assert server.accept_errors == {"ECONNABORTED": 1, "EAGAIN": 1}


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_resource_errors_start_one_logged_episode(code, caplog):
    server = type("S", (FailingAccept,), {"failures": [code, code, code]})(
        ("127.0.0.1", 0), sockherd.StreamRequestHandler
    )
    with serving(server):
        tcp_request(server.server_address)
    messages = [record.getMessage() for record in caplog.records]
    assert sum("Pausing accepts" in message for message in messages) == 1
    assert sum("works again after 3 failed attempts" in message for message in messages) == 1
    assert server.accept_errors == {errno.errorcode[code]: 3}
