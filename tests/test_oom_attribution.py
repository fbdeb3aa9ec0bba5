"""OOM attribution for real: a server in its own cgroup v1 memory group with a small limit,
a request that allocates past it, and the kernel's OOM killer ending the worker."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from conftest import wait_until
from server_process import ServerProcess, metric_value

from sockherd.workers import cgroup_files

LIMIT = 160 * 1024 * 1024  # the supervisor and one worker need ~40 MB of it


@contextlib.contextmanager
def memory_group(limit: int) -> Iterator[str]:
    """A new cgroup v1 memory group under this process's own, removed afterwards."""
    own = cgroup_files.controller_dir("memory")
    if own is None or own.version != 1:
        pytest.skip("the test creates a cgroup v1 memory group; this host has none writable")
    group = os.path.join(own.path, f"sockherd-oom-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(group)
    except OSError as error:
        pytest.skip(f"cannot create a memory cgroup here: {error}")
    try:
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as file:
            file.write(str(limit))
        memsw = os.path.join(group, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):  # with swap accounting: OOM, not swapping
            with open(memsw, "w") as file:
                file.write(str(limit))
        yield group
    finally:
        wait_until(lambda: _empty(group), timeout=30)
        os.rmdir(group)


def _empty(group: str) -> bool:
    with open(os.path.join(group, "cgroup.procs")) as procs:
        return not procs.read().strip()


@pytest.mark.timeout(120)
def test_an_oom_kill_is_logged_with_the_request_and_counted_as_oom():
    with memory_group(LIMIT) as group:
        spec = {
            "server": "PreforkTCPServer",
            "handler": "operator_handlers:Web",
            "settings": {"workers": 1},
            "attributes": {"metrics_address": ["127.0.0.1", 0]},
        }
        script = (
            f"with open({os.path.join(group, 'cgroup.procs')!r}, 'w') as procs:\n"
            "    procs.write(str(__import__('os').getpid()))\n"
            f"serve_spec({spec!r})\n"
        )
        with ServerProcess(script) as server:
            with socket.create_connection(server.address, timeout=30) as client:
                client.sendall(b"GET /big/400 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert client.makefile("rb").readline() == b""  # its worker died
            line = server.wait_for("was killed by the kernel OOM killer", timeout=30)
            assert line.startswith("ERROR sockherd.supervisor.worker_pool: worker 0 (pid ")
            assert ' while serving "GET /big/400 HTTP/1.1" from 127.0.0.1:' in line
            assert line.endswith(" s"), line
            scrape = server.scrape()
            assert metric_value(scrape, "sockherd_worker_exits_total", cause="oom") == 1
            assert metric_value(scrape, "sockherd_worker_restarts_total", reason="oom") == 1
            assert metric_value(scrape, "sockherd_worker_restarts_total", reason="crashed") == 0
            url = f"http://127.0.0.1:{server.metrics_port}/status.json"
            with urllib.request.urlopen(url, timeout=10) as response:
                exits = json.load(response)["servers"][0]["pool"]["last_exits"]
            assert exits[0]["cause"] == "oom" and exits[0]["request"] == "GET /big/400 HTTP/1.1"
            print("\n" + line)
