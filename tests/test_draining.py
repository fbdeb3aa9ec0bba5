"""The Arbiter drains inside its loop: while requests finish after TERM, the metrics
endpoint and the control socket keep answering, and say the supervisor is draining.
And supervision does not ride on service_actions(): an override without super() changes
nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import listening_address, wait_for_line, wait_until
from test_cli import PROJECT_ROOT, TESTS, ctl, free_port

RELEASE_DEADLINE = 10.0  # seconds the test lets the released request take to answer


def serve(tmp_path, *args: str) -> tuple[subprocess.Popen, str, int]:
    """`sockherd serve prefork_handlers:Commands ARGS` with metrics and a control socket."""
    control, metrics = str(tmp_path / "control.sock"), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "serve", "prefork_handlers:Commands",
         "--bind", "127.0.0.1:0", "--metrics", f"127.0.0.1:{metrics}", "--control", control,
         "--graceful-timeout", "20", *args],
        cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=TESTS), stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return process, control, metrics


def timed_scrape(port: int) -> tuple[int, str, float]:
    began = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
        return response.status, body, time.monotonic() - began


def state_series(body: str) -> dict[str, float]:
    return {
        match[1]: float(match[2])
        for match in re.finditer(r'sockherd_supervisor_state\{state="(\w+)"\} (\S+)', body)
    }


@pytest.mark.parametrize(
    "mode", [["--mode", "prefork", "--workers", "1"],
             ["--mode", "prefork", "--workers", "1", "--handoff", "dispatch"],
             ["--mode", "prefork", "--workers", "1", "--threads", "4"],
             ["--mode", "fork"], ["--mode", "thread"]],
    ids=["prefork-accept", "prefork-dispatch", "prefork-threads", "fork", "thread"],
)  # fmt: skip
def test_metrics_and_ctl_status_answer_during_a_graceful_drain(tmp_path, mode):
    process, control, metrics = serve(tmp_path, *mode)
    try:
        address = listening_address(wait_for_line(process.stderr, "listening on"))
        status, body, _ = wait_until(lambda: _try(timed_scrape, metrics), timeout=10)
        assert state_series(body)["running"] == 1.0
        with socket.create_connection(address, timeout=30) as client:
            client.sendall(b"hold late\n")  # in progress until the test sends another line
            wait_until(lambda: json.loads(ctl(control, "status", "--json").stdout)["in_progress"])
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: _json_state(control) == "draining", timeout=5)

            status, body, seconds = timed_scrape(metrics)
            assert status == 200 and seconds < 0.1, seconds
            print(f"\n{' '.join(mode)}: /metrics answered in {seconds * 1000:.1f} ms, draining")
            states = state_series(body)
            assert states["draining"] == 1.0 and sum(states.values()) == 1.0

            table = ctl(control, "status")
            assert table.returncode == 0, table.stderr
            assert "draining" in table.stdout and "1 request in progress" in table.stdout
            assert re.search(r"(\d+\.\d) s left", table.stdout), table.stdout
            reply = json.loads(ctl(control, "status", "--json").stdout)
            assert reply["state"] == "draining" and reply["in_progress"] == 1
            assert 0 < reply["drain_seconds_left"] <= 20

            status, body, _ = timed_scrape(metrics)  # still draining, still answering
            assert status == 200 and state_series(body)["draining"] == 1.0
            assert _json_state(control) == "draining"
            client.sendall(b"release\n")  # now the request in progress finishes
            client.settimeout(0.05)
            answered = b""
            deadline = time.monotonic() + RELEASE_DEADLINE
            while not answered.endswith(b"\n") and time.monotonic() < deadline:
                scraped = _try(timed_scrape, metrics)  # answers until the last request is done
                if scraped is not None:
                    assert scraped[0] == 200 and state_series(scraped[1])["draining"] == 1.0
                try:
                    answered += client.recv(100)
                except TimeoutError:
                    pass
            assert answered.endswith(b" late\n")
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _try(function, *args):
    try:
        return function(*args)
    except OSError:
        return None


def _json_state(control: str) -> str | None:
    result = ctl(control, "status", "--json")
    return json.loads(result.stdout)["state"] if result.returncode == 0 else None


def test_a_prefork_factory_without_super_service_actions_is_still_supervised(tmp_path):
    control = str(tmp_path / "control.sock")
    process = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "serve", "cli_targets:careless_prefork_server",
         "--control", control],
        cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=TESTS), stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_line(process.stderr, "2 workers ready")
        before = json.loads(ctl(control, "status", "--json").stdout)["workers"]
        victim = before[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        def replaced() -> bool:
            workers = json.loads(ctl(control, "status", "--json").stdout)["workers"]
            pids = {w["pid"] for w in workers if w["state"] == "idle"}
            return len(pids) == 2 and victim not in pids

        wait_until(replaced, timeout=3)
        print(f"\nSIGKILLed worker replaced in {time.monotonic() - killed_at:.2f} s")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, err = process.communicate()
    assert "Traceback" not in err and "stopped" in err
