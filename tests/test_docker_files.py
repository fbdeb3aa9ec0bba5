"""The container's command, run the way the image runs it (no Docker engine here):
the Dockerfile's ENV and ENTRYPOINT/CMD start a prefork supervisor with metrics and a
control socket, and its HEALTHCHECK command (GET /livez on the metrics port) reports healthy."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request

import pytest
from conftest import listening_address, tcp_request, wait_for_line, wait_until

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(PROJECT_ROOT, "docker", "Dockerfile")


def dockerfile_instructions() -> dict[str, str]:
    """Each instruction's text (continuation lines joined); later ones override earlier."""
    with open(DOCKERFILE) as file:
        text = re.sub(r"\\\n\s*", " ", file.read())
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found[keyword] = (found.get(keyword, "") + " " + rest).strip()
    return found


def test_the_image_command_serves_with_metrics_and_its_healthcheck_passes():
    instructions = dockerfile_instructions()
    env = dict(os.environ)
    for name, value in re.findall(r"(SOCKHERD_\w+)=(\S+)", instructions["ENV"]):
        env[name] = value
    assert env["SOCKHERD_MODE"] == "prefork" and instructions["STOPSIGNAL"] == "SIGTERM"
    with tempfile.TemporaryDirectory(dir="/tmp") as run_dir:
        control = os.path.join(run_dir, "control.sock")
        # The image's addresses, moved to loopback and free ports for the test.
        env.update(
            SOCKHERD_BIND="127.0.0.1:0",
            SOCKHERD_METRICS=f"127.0.0.1:{_free_port()}",
            SOCKHERD_CONTROL=control,
            SOCKHERD_WORKERS="2",
        )
        command = json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions["CMD"])
        assert command[:2] == ["sockherd", "serve"]
        process = subprocess.Popen(
            [sys.executable, "-m", "sockherd", *command[1:]],
            cwd=PROJECT_ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = wait_for_line(process.stderr, "listening on")
            assert tcp_request(listening_address(line), b"container\n") == b"container\n"
            healthcheck = json.loads(instructions["HEALTHCHECK"].split("CMD", 1)[1])
            assert healthcheck[0] == "python" and "/livez" in healthcheck[-1]
            code = healthcheck[-1].replace("127.0.0.1:9100", env["SOCKHERD_METRICS"])
            wait_for_line(process.stderr, "metrics on")

            def healthy() -> bool:  # the endpoint binds as the loop starts: allow a moment
                result = subprocess.run(
                    [sys.executable, *healthcheck[1:-1], code],
                    cwd=PROJECT_ROOT,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                return result.returncode == 0

            wait_until(healthy, timeout=20, interval=0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            status = process.wait(30)
            process.communicate(timeout=30)
        assert status == 0


def test_the_image_serves_metrics_on_the_metrics_port():
    env = dict(os.environ, SOCKHERD_MODE="sync", SOCKHERD_BIND="127.0.0.1:0")
    metrics_port = _free_port()
    env["SOCKHERD_METRICS"] = f"127.0.0.1:{metrics_port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "serve", "sockherd.examples.echo:EchoHandler"],
        cwd=PROJECT_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_line(process.stderr, f"metrics on http://127.0.0.1:{metrics_port}/metrics")

        def scraped():
            try:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:
                    return b"sockherd_requests_total" in response.read()
            except OSError:
                return False

        wait_until(scraped)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        process.communicate(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("name", ["compose.yaml", "prometheus/prometheus.yml"])
def test_compose_and_prometheus_configs_name_the_metrics_port(name):
    with open(os.path.join(PROJECT_ROOT, "docker", name)) as file:
        assert "9100" in file.read()
