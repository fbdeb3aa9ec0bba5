"""The operator's view over HTTP: /status.json, /livez, /readyz, the live record, /proc
figures, last exits and slow-request tracebacks, against real prefork servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from conftest import wait_until
from server_process import metric_value, server_process

LOOPBACK = ("127.0.0.1", 0)


def fetch(port: int, path: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of GET path on the metrics port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read(), error.headers["Content-Type"]


def status(port: int) -> dict[str, Any]:
    code, body, content_type = fetch(port, "/status.json")
    assert code == 200 and content_type == "application/json"
    return json.loads(body)  # type: ignore[no-any-return]


def pool_of(document: dict[str, Any]) -> dict[str, Any]:
    return document["servers"][0]["pool"]  # type: ignore[no-any-return]


def busy_with(port: int, description: str) -> dict[str, Any] | None:
    for worker in pool_of(status(port))["workers"]:
        if worker["state"] == "busy" and worker["request"] == description:
            return worker  # type: ignore[no-any-return]
    return None


def hold(address: tuple[str, int], description: str) -> socket.socket:
    """A request that stays in hand until `release()`."""
    client = socket.create_connection(address, timeout=10)
    client.sendall(f"hold x {description}\n".encode())
    return client


def release(client: socket.socket) -> bytes:
    with client:
        client.sendall(b"done\n")
        return client.makefile("rb").readline()


@pytest.mark.timeout(60)
def test_status_json_shows_the_busy_worker_its_request_and_proc_figures():
    with server_process(
        "PreforkTCPServer", "operator_handlers:Lines", {"workers": 2}, metrics_address=LOOPBACK
    ) as server:
        port = server.metrics_port
        assert port is not None
        wait_until(lambda: pool_of(status(port))["workers_idle"] == 2, timeout=20)
        client = hold(server.address, "report-2026 for tenant é")
        first = wait_until(lambda: busy_with(port, "report-2026 for tenant é"), timeout=10)
        assert first["peer"] == "%s:%d" % client.getsockname()
        second = wait_until(
            lambda: (
                (w := busy_with(port, "report-2026 for tenant é"))
                and w["request_elapsed"] > first["request_elapsed"]
                and w
            ),
            timeout=10,
        )
        assert second["pid"] == first["pid"]
        document = status(port)
        assert document["schema"] == "sockherd-status/1"
        assert document["supervisor"]["state"] == "running" and document["supervisor"]["ready"]
        pool = pool_of(document)
        assert (pool["workers_total"], pool["workers_busy"], pool["workers_idle"]) == (2, 1, 1)
        assert pool["settings"]["workers"] == 2 and pool["accepted"] >= 1
        assert document["servers"][0]["listen_queue"]["backlog"] > 0
        for worker in pool["workers"]:
            for field in ("cpu_seconds", "rss", "pss", "uss"):
                assert isinstance(worker[field], (int, float)), (field, worker)
            assert worker["rss"] > 1_000_000 and 0 < worker["pss"] <= worker["rss"]
        idle = [w for w in pool["workers"] if w["state"] == "idle"]
        assert idle[0]["request"] is None and idle[0]["request_elapsed"] is None
        scrape = server.scrape()
        slot = str(first["slot"])
        assert metric_value(scrape, "sockherd_worker_memory_bytes", worker=slot, kind="pss") > 0
        assert metric_value(scrape, "sockherd_worker_cpu_seconds_total", worker=slot) >= 0
        assert "sockherd_slow_requests_total" in scrape
        assert release(client).startswith(str(first["pid"]).encode())
        assert fetch(port, "/livez")[0] == 200
        assert fetch(port, "/readyz")[:2] == (200, b"ready\n")


@pytest.mark.timeout(60)
def test_http_handlers_show_their_request_line():
    with server_process(
        "PreforkTCPServer", "operator_handlers:Web", {"workers": 1}, metrics_address=LOOPBACK
    ) as server:
        port = server.metrics_port
        assert port is not None
        client = socket.create_connection(server.address, timeout=10)
        with client:
            client.sendall(b"GET /sleep/2 HTTP/1.1\r\nHost: x\r\n\r\n")
            worker = wait_until(lambda: busy_with(port, "GET /sleep/2 HTTP/1.1"), timeout=10)
            assert worker["peer"] == "%s:%d" % client.getsockname()
            assert client.makefile("rb").readline().startswith(b"HTTP/1.0 200")


@pytest.mark.timeout(60)
def test_the_last_exit_of_a_slot_names_its_cause_and_the_request_it_held():
    with server_process(
        "PreforkTCPServer", "operator_handlers:Lines", {"workers": 1}, metrics_address=LOOPBACK
    ) as server:
        port = server.metrics_port
        assert port is not None
        client = hold(server.address, "the-doomed-request")
        victim = wait_until(lambda: busy_with(port, "the-doomed-request"), timeout=10)
        os.kill(victim["pid"], signal.SIGKILL)
        with client:
            assert client.makefile("rb").readline() == b""  # the connection died with it
        exits = wait_until(lambda: pool_of(status(port))["last_exits"], timeout=10)
        record = exits[0]
        assert (record["slot"], record["pid"]) == (victim["slot"], victim["pid"])
        assert (record["cause"], record["status"]) == ("signal", "signal SIGKILL")
        assert record["request"] == "the-doomed-request" and record["request_elapsed"] > 0
        assert abs(record["at"] - time.time()) < 30
        scrape = server.scrape()
        assert metric_value(scrape, "sockherd_worker_exits_total", cause="signal") == 1
        assert metric_value(scrape, "sockherd_worker_exits_total", cause="oom") == 0


@pytest.mark.timeout(60)
def test_readyz_turns_503_at_term_while_livez_stays_200_until_exit():
    with server_process(
        "PreforkTCPServer",
        "operator_handlers:Lines",
        {"workers": 1, "graceful_timeout": 30.0},
        metrics_address=LOOPBACK,
    ) as server:
        port = server.metrics_port
        assert port is not None
        wait_until(lambda: fetch(port, "/readyz")[0] == 200, timeout=20)
        client = hold(server.address, "keeps-the-drain-going")
        wait_until(lambda: busy_with(port, "keeps-the-drain-going"), timeout=10)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for("stopping gracefully")
        code, body, _ = fetch(port, "/readyz")
        assert (code, body) == (503, b"supervisor is draining\n")
        assert fetch(port, "/livez")[0] == 200
        assert status(port)["supervisor"]["ready"] is False
        assert release(client)  # the request in progress still finishes
        assert server.process.wait(30) == 0


@pytest.mark.timeout(60)
def test_a_slow_request_logs_its_traceback_once_and_still_gets_its_reply(tmp_path):
    settings = {"workers": 1, "slow_request_timeout": 0.3}
    with server_process(
        "PreforkTCPServer", "operator_handlers:Lines", settings, metrics_address=LOOPBACK
    ) as server:
        wait_until(lambda: pool_of(status(server.metrics_port))["workers_idle"] == 1, timeout=20)
        with socket.create_connection(server.address, timeout=10) as client:
            began = time.monotonic()
            client.sendall(b"slow 1.2 nightly-export\n")
            frame = server.wait_for("in deliberately_slow", timeout=10)
            seen_after = time.monotonic() - began
            header = server.wait_for("has been serving")
            reply = client.makefile("rb").readline()
        assert reply.endswith(b" 1.2\n")  # the request ran to its end
        assert '"nightly-export"' in header and "slow_request_timeout=0.3" in header
        reported_at = float(header.split(" for ")[1].split(" s ")[0])
        assert 0.3 <= reported_at <= 0.4, header  # the supervisor's own clock
        assert seen_after < 2.0, seen_after  # the test's view, generous on a loaded machine
        assert "File" in frame
        assert server.log.count("has been serving") == 1  # once per request
        scrape = server.scrape()
        assert metric_value(scrape, "sockherd_slow_requests_total") == 1
        print(f"slow traceback logged {seen_after:.3f} s after the request began")


@pytest.mark.timeout(60)
def test_the_slow_log_file_gets_header_and_traceback(tmp_path):
    slow_log = tmp_path / "slow.log"
    settings = {"workers": 1, "slow_request_timeout": 0.2, "slow_log": str(slow_log)}
    with server_process("PreforkTCPServer", "operator_handlers:Lines", settings) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(b"slow 0.6 to-the-file\n")
            assert client.makefile("rb").readline().endswith(b" 0.6\n")
        text = wait_until(
            lambda: (t := slow_log.read_text()) and "deliberately_slow" in t and t, timeout=10
        )
        assert '"to-the-file"' in text and "has been serving" not in server.log


@pytest.mark.timeout(60)
def test_a_recycled_worker_is_recorded_as_recycled():
    settings = {"workers": 1, "max_requests": 1}
    with server_process(
        "PreforkTCPServer", "operator_handlers:Lines", settings, metrics_address=LOOPBACK
    ) as server:
        port = server.metrics_port
        assert port is not None
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(b"echo once\n")
            pid = int(client.makefile("rb").readline().split()[0])
        exits = wait_until(lambda: pool_of(status(port))["last_exits"], timeout=10)
        assert [(e["pid"], e["cause"], e["status"], e["request"]) for e in exits] == [
            (pid, "recycled", "exit 0", None)
        ]
        assert pool_of(status(port))["exit_causes"] == {"recycled": 1}


@pytest.mark.timeout(60)
def test_an_unwritable_slow_log_says_so_once_and_the_log_gets_the_tracebacks(tmp_path):
    missing = str(tmp_path / "no-such-directory" / "slow.log")
    settings = {"workers": 1, "slow_request_timeout": 0.2, "slow_log": missing}
    with server_process("PreforkTCPServer", "operator_handlers:Lines", settings) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(b"slow 0.6 fallback\n")
            assert client.makefile("rb").readline().endswith(b" 0.6\n")
        server.wait_for("in deliberately_slow")
        assert server.log.count("cannot open slow_log") == 1
        assert '"fallback"' in server.wait_for("has been serving")
