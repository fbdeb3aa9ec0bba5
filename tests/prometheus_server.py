"""A real Prometheus for the tests: docker/prometheus/prometheus.yml (and its alert rules)
with the target replaced by a test server's loopback metrics address, scraping every second.

`running_prometheus(target)` starts Debian's `prometheus` on a free loopback port in a
temporary directory and yields a `Prometheus` to query once it is ready; it skips the test
(with the reason) when the binary is missing.  `.ci/install-system-deps` installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_until

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(PROJECT_ROOT, "docker", "prometheus")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Prometheus:
    """The HTTP API of a running Prometheus on 127.0.0.1:`port`."""

    def __init__(self, port: int) -> None:
        self.port = port

    def api(self, path: str, **parameters: str) -> Any:
        """GET /api/v1/`path` and return its `data` (raises on an error reply)."""
        query = urllib.parse.urlencode(parameters)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            reply = json.loads(response.read())
        if reply.get("status") != "success":
            raise AssertionError(f"{path} {parameters}: {reply}")
        return reply["data"]

    def ready(self, process: subprocess.Popen) -> bool:
        """Whether it answers /-/ready (it fails the test if the process has exited)."""
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query's result vector (a PromQL error raises urllib.error.HTTPError)."""
        data = self.api("query", query=expression)
        return data["result"] if data["resultType"] == "vector" else [data]


@contextlib.contextmanager
def running_prometheus(target: str, rules: bool = True) -> Iterator[Prometheus]:
    """Prometheus scraping `target` ("127.0.0.1:PORT") every second, with the project's
    alert rules unless `rules` is False; stopped (and its data removed) on exit."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package 'prometheus'; see .ci/run)")
    with tempfile.TemporaryDirectory() as workdir:
        with open(os.path.join(CONFIG_DIR, "prometheus.yml")) as template:
            config = template.read().replace("sockherd:9100", target)
        config = config.replace("scrape_interval: 5s", "scrape_interval: 1s")
        config = config.replace("scrape_timeout: 4s", "scrape_timeout: 1s")
        config = config.replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        if rules:
            shutil.copy(os.path.join(CONFIG_DIR, "alerts.yml"), workdir)
        config_path = os.path.join(workdir, "prometheus.yml")
        with open(config_path, "w") as file:
            file.write(config)
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            prometheus = Prometheus(port)
            wait_until(lambda: prometheus.ready(process), timeout=60, interval=0.1)
            yield prometheus
        finally:
            process.terminate()
            process.wait(30)
