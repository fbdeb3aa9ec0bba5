"""The /status page in a real browser: headless Chromium loads it, lets it refresh from
/status.json, and the drawn rows must match the workers, the busy one showing its request.
A screenshot lands in test-artifacts/ (gitignored) for a person to look at."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess

import pytest
from conftest import wait_until
from server_process import PROJECT_ROOT, server_process
from test_status_endpoints import busy_with, hold, pool_of, release, status

ARTIFACTS = os.path.join(PROJECT_ROOT, "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DESCRIPTION = "GET /reports/quarterly?year=2026&region=emea HTTP/1.1"


def chromium(*arguments: str, timeout: float = 60.0) -> str:
    """Run headless Chromium (its own profile in a temporary directory); its stdout."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        *arguments,
    ]
    done = subprocess.run(command, capture_output=True, timeout=timeout, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/install-system-deps installs it)"
)
def test_the_status_page_draws_the_workers_and_the_busy_request(tmp_path):
    settings = {"workers": 3}
    with server_process(
        "PreforkTCPServer", "operator_handlers:Lines", settings, metrics_address=("127.0.0.1", 0)
    ) as server:
        port = server.metrics_port
        assert port is not None
        wait_until(lambda: pool_of(status(port))["workers_idle"] == 3, timeout=30)
        # A slot with a last exit: a worker killed in the middle of a request.
        doomed = hold(server.address, "POST /upload/video-4k HTTP/1.1")
        victim = wait_until(lambda: busy_with(port, "POST /upload/video-4k HTTP/1.1"))
        os.kill(victim["pid"], signal.SIGKILL)
        with doomed:
            doomed.makefile("rb").readline()
        wait_until(lambda: pool_of(status(port))["workers_idle"] == 3, timeout=30)
        for _ in range(5):  # some history in the request counters
            with socket.create_connection(server.address, timeout=10) as client:
                client.sendall(b"echo x\n")
                client.makefile("rb").readline()
        client = hold(server.address, DESCRIPTION)
        try:
            busy = wait_until(lambda: busy_with(port, DESCRIPTION))
            url = f"http://127.0.0.1:{port}/status"
            profile = str(tmp_path / "profile")
            # Virtual time runs the page's 2 s refresh timer twice within the budget.
            dom = chromium(
                f"--user-data-dir={profile}", "--virtual-time-budget=4500", "--dump-dom", url
            )
            refreshes = int(re.search(r'data-refreshes="(\d+)"', dom).group(1))  # type: ignore[union-attr]
            assert refreshes >= 2, "the page did not refresh from /status.json"
            rows = re.findall(r'<tr class="(busy|)" data-slot="(\d+)">(.*?)</tr>', dom, re.S)
            workers = pool_of(status(port))["workers"]
            assert sorted(int(slot) for _, slot, _ in rows) == sorted(w["slot"] for w in workers)
            busy_rows = [(slot, cells) for kind, slot, cells in rows if kind == "busy"]
            assert [int(slot) for slot, _ in busy_rows] == [busy["slot"]]
            cells = busy_rows[0][1]
            assert html.escape(DESCRIPTION, quote=False) in cells
            assert str(busy["pid"]) in cells and "MiB" in cells
            assert 'class="pill c-signal">signal<' in dom  # the killed worker's last exit
            assert "POST /upload/video-4k HTTP/1.1" in dom
            os.makedirs(ARTIFACTS, exist_ok=True)
            shot = os.path.join(ARTIFACTS, "status-page.png")
            chromium(
                f"--user-data-dir={profile}",
                "--window-size=1400,1000",
                "--virtual-time-budget=2500",
                f"--screenshot={shot}",
                url,
            )
            assert os.path.getsize(shot) > 10_000
        finally:
            release(client)
