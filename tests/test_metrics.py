"""Prometheus metrics: exact counts in every mode, monotonic across worker restarts, a clean
exposition (promtool), an endpoint that never stalls the loop, and a real Prometheus scrape."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

import pytest
from conftest import metrics_endpoint, pool_of, serving, tcp_request, wait_until
from prefork_handlers import Commands
from prometheus_client.parser import text_string_to_metric_families
from prometheus_server import running_prometheus

import sockherd

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = [
    "sync",
    "threading",
    "forking",
    "prefork-accept",
    "prefork-dispatch",
    "prefork-threads-accept",
    "prefork-threads-dispatch",
]


def make_server(mode: str, **settings):
    if mode.startswith("prefork"):
        threads = {"threads": 4} if "-threads-" in mode else {}
        server = sockherd.PreforkTCPServer(
            ("127.0.0.1", 0),
            Commands,
            handoff=mode.rsplit("-", 1)[1],
            workers=2,
            **threads,
            **settings,
        )
    else:
        cls = {
            "sync": sockherd.TCPServer,
            "threading": sockherd.ThreadingTCPServer,
            "forking": sockherd.ForkingTCPServer,
        }[mode]
        server = cls(("127.0.0.1", 0), Commands)
    server.metrics_address = ("127.0.0.1", 0)
    server.metrics_name = "test"
    return server


def metrics_port(server) -> int:
    return metrics_endpoint(server).address[1]


def scrape(server, path: str = "/metrics") -> str:
    url = f"http://127.0.0.1:{metrics_port(server)}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(text: str, name: str, **labels: str) -> float:
    """Sum of a sample over the series whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples(text).items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


@pytest.mark.parametrize("mode", MODES)
def test_requests_are_counted_exactly_by_outcome_in_every_mode(mode):
    server = make_server(mode)
    with serving(server, poll_interval=0.05):
        for index in range(7):
            tcp_request(server.server_address, b"echo %d\n" % index)
        for _ in range(3):
            tcp_request(server.server_address, b"raise\n")
        if mode == "forking":
            wait_until(lambda: not server.active_children)  # counted when reaped
        text = scrape(server)
    assert total(text, "sockherd_requests_total", outcome="ok") == 7
    assert total(text, "sockherd_requests_total", outcome="error") == 3
    assert total(text, "sockherd_request_duration_seconds_count", server="test") == 10
    assert total(text, "sockherd_request_duration_seconds_bucket", le="+Inf") == 10


@pytest.mark.timeout(120)
@pytest.mark.parametrize("handoff", ["accept", "dispatch"])
def test_requests_served_at_once_by_threads_are_counted_exactly(handoff):
    """2 workers x 8 threads, 16 clients at once, 10 requests each (1 in 5 raises): every
    request is in the counters and the histogram once, however the threads interleave."""
    from server_process import metric_value, request_line, server_process

    settings = {"workers": 2, "threads": 8, "handoff": handoff, "heartbeat_interval": 0.05}
    metrics = {"metrics_address": ["127.0.0.1", 0], "metrics_name": "t"}
    with server_process("PreforkTCPServer", "prefork_handlers:Commands", settings, **metrics) as s:
        wait_until(lambda: metric_value(s.scrape(), "sockherd_threads", state="idle") == 16)

        def client(number: int) -> None:
            for index in range(10):
                line = b"raise\n" if index % 5 == 4 else b"echo %d\n" % number
                request_line(s.address, line, timeout=30)

        clients = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert not any(thread.is_alive() for thread in clients)

        def counted() -> float:
            return metric_value(s.scrape(), "sockherd_request_duration_seconds_count", server="t")

        wait_until(lambda: counted() == 160, timeout=30)
        text = s.scrape()
    assert metric_value(text, "sockherd_requests_total", outcome="ok") == 128
    assert metric_value(text, "sockherd_requests_total", outcome="error") == 32
    assert metric_value(text, "sockherd_request_duration_seconds_bucket", le="+Inf") == 160


def test_counters_never_go_down_when_workers_are_killed_and_replaced():
    server = make_server("prefork-accept", worker_timeout=0.5, kill_grace=0.3)
    with serving(server, poll_interval=0.05):
        for index in range(10):
            tcp_request(server.server_address, b"echo %d\n" % index)
        # Both workers booted: a worker killed while still booting is a boot failure.
        wait_until(lambda: [w["state"] for w in server.worker_stats()] == ["idle", "idle"])
        before = samples(scrape(server))
        victim = server.worker_stats()[0]
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(lambda: victim["pid"] not in {w["pid"] for w in server.worker_stats()})
        tcp_request(server.server_address, b"hang\n", timeout=10)  # killed after the timeout
        wait_until(lambda: pool_of(server).restarts["timeout"] == 1)
        after_text = scrape(server)
    after = samples(after_text)
    for key, value in before.items():
        if key[0] in ("sockherd_requests_total", "sockherd_request_duration_seconds_count"):
            assert after.get(key, 0) >= value, key
    assert total(after_text, "sockherd_requests_total") == 11
    assert total(after_text, "sockherd_requests_total", outcome="timeout") == 1
    assert total(after_text, "sockherd_worker_restarts_total", reason="crashed") == 1
    assert total(after_text, "sockherd_worker_restarts_total", reason="timeout") == 1


def test_worker_gauges_emit_every_state_and_the_restart_reasons():
    server = make_server("prefork-dispatch")
    with serving(server, poll_interval=0.05):
        wait_until(lambda: len(server.worker_stats()) == 2)
        wait_until(lambda: all(w["state"] == "idle" for w in server.worker_stats()))
        text = scrape(server)
    states = {
        dict(labels)["state"]: value
        for (name, labels), value in samples(text).items()
        if name == "sockherd_workers"
    }
    assert states == {"starting": 0, "idle": 2, "busy": 0, "stopping": 0}
    assert total(text, "sockherd_workers_desired") == 2
    assert total(text, "sockherd_worker_heartbeat_age_seconds") < 5


def test_forked_children_exits_are_labelled_by_exit_code_and_signal():
    server = make_server("forking")
    with serving(server, poll_interval=0.05):
        tcp_request(server.server_address, b"echo fine\n")
        tcp_request(server.server_address, b"raise\n")
        wait_until(lambda: not server.active_children)
        text = scrape(server)
    assert total(text, "sockherd_child_exits_total", kind="request", exit_code="0") == 1
    assert total(text, "sockherd_child_exits_total", kind="request", exit_code="1") == 1


@pytest.mark.parametrize("mode", ["forking", "prefork-accept"])
def test_exposition_passes_promtool(mode):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; see .ci/run)")
    server = make_server(mode)
    with serving(server, poll_interval=0.05):
        tcp_request(server.server_address, b"echo lint\n")
        text = scrape(server)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_a_slow_scraper_does_not_stall_the_server():
    server = make_server("sync")  # the sync loop serves requests and scrapes alike
    with serving(server, poll_interval=0.05):
        port = metrics_port(server)
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"GET /metr")  # and never finishes its request
            for index in range(5):
                assert tcp_request(server.server_address, b"echo %d\n" % index).endswith(
                    b"%d\n" % index
                )
            assert "sockherd_requests_total" in scrape(server)


def test_unknown_paths_and_methods_get_clear_http_errors():
    server = make_server("sync")
    with serving(server, poll_interval=0.05):
        with pytest.raises(urllib.error.HTTPError) as missing:
            scrape(server, "/nope")
        assert missing.value.code == 404
        request = urllib.request.Request(
            f"http://127.0.0.1:{metrics_port(server)}/metrics", data=b"x", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
        missing.value.close()
        refused.value.close()


def test_metrics_port_in_use_is_reported_with_the_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = sockherd.TCPServer(("127.0.0.1", 0), Commands)
        server.metrics_address = ("127.0.0.1", port)
        try:
            with pytest.raises(sockherd.BindError, match=f"127.0.0.1 port {port}.*in use"):
                server.serve_forever()
        finally:
            server.server_close()


def test_importing_sockherd_does_not_import_the_exposition_module():
    code = (
        "import sys, sockherd; "
        "print('prometheus_client.exposition' in sys.modules, 'prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.stdout.split() == ["False", "False"]


# --- a real Prometheus server ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_real_prometheus_scrapes_the_request_count():
    server = make_server("prefork-dispatch")
    with serving(server, poll_interval=0.05):
        for index in range(12):
            tcp_request(server.server_address, b"echo %d\n" % index)
        with running_prometheus(f"127.0.0.1:{metrics_port(server)}") as prometheus:

            def scraped_count():
                with contextlib.suppress(OSError, KeyError, ValueError):
                    result = prometheus.query('sum(sockherd_requests_total{job="sockherd"})')
                    return result and float(result[0]["value"][1]) == 12
                return False

            wait_until(scraped_count, timeout=60, interval=0.25)


def test_listen_backlog_and_queue_length_are_reported_on_linux():
    if not sys.platform.startswith("linux"):
        pytest.skip("TCP_INFO listen figures are Linux's")
    server = make_server("sync")
    with serving(server, poll_interval=0.05):
        text = scrape(server)
    with open("/proc/sys/net/core/somaxconn") as limit:
        assert total(text, "sockherd_listen_backlog") == min(socket.SOMAXCONN, int(limit.read()))
    assert total(text, "sockherd_listen_queue_length") == 0


def test_serving_metrics_keeps_prometheus_client_out_of_the_forking_parent():
    """Its import costs ~12 MB, which every fork() would copy page tables for."""
    code = """
import sys, threading, urllib.request
import sockherd
server = sockherd.ForkingTCPServer(("127.0.0.1", 0), sockherd.StreamRequestHandler)
server.metrics_address = ("127.0.0.1", 0)
loop = threading.Thread(target=server.serve_forever)
loop.start()
from sockherd.metrics.service import endpoint_address
while endpoint_address(server) is None:
    pass
port = endpoint_address(server)[1]
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
server.shutdown(); loop.join(); server.server_close()
print(b"sockherd_requests_total" in body, "prometheus_client" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["True", "False"], result.stderr


USER_METRICS_SCENARIO = """
import json, os, socket, sys, threading, time, urllib.request
import prometheus_client                       # after PROMETHEUS_MULTIPROC_DIR is set
import sockherd

HANDLED = prometheus_client.Counter("handled", "Requests a handler saw", ["path"])
SIZES = prometheus_client.Histogram("request_size_bytes", "Sizes", buckets=(1, 10, 100))

class Counting(sockherd.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        HANDLED.labels(path="/echo").inc()
        SIZES.observe(len(line))
        self.wfile.write(line)

mode = sys.argv[1]
if mode == "prefork":
    server = sockherd.PreforkTCPServer(("127.0.0.1", 0), Counting, workers=2, max_requests=7)
else:
    server = sockherd.ForkingTCPServer(("127.0.0.1", 0), Counting)
server.metrics_address = ("127.0.0.1", 0)
loop = threading.Thread(target=server.serve_forever, args=(0.05,))
loop.start()
from sockherd.metrics.service import endpoint_address
while endpoint_address(server) is None:
    time.sleep(0.01)
port = endpoint_address(server)[1]

def scrape():
    began = time.perf_counter()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return body, 1000 * (time.perf_counter() - began)

for index in range(60):
    with socket.create_connection(server.server_address, timeout=10) as client:
        client.sendall(b"x" * index + b"\\n")
        client.shutdown(socket.SHUT_WR)
        client.recv(1000)
deadline = time.monotonic() + 10
while mode == "forking" and server.active_children and time.monotonic() < deadline:
    time.sleep(0.01)
body, took = scrape()
files = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
server.shutdown(); loop.join(); server.server_close()
handled = [l for l in body.splitlines() if l.startswith("handled_total{")]
count = [l for l in body.splitlines() if l.startswith("request_size_bytes_count")]
print(json.dumps({"handled": handled, "count": count, "files": files, "ms": took}))
"""


@pytest.mark.parametrize("mode", ["forking", "prefork"])
def test_handlers_using_prometheus_client_multiprocess_mode_are_counted_and_compacted(mode):
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "counter_99999.db"), "wb"):
            pass  # a stale file from an earlier run: wiped at start
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=directory)
        result = subprocess.run(
            [sys.executable, "-c", USER_METRICS_SCENARIO, mode],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["handled"] == ['handled_total{path="/echo"} 60.0']
    assert report["count"] == ["request_size_bytes_count 60.0"]
    if mode == "forking":  # every child's files were folded into the archives
        assert report["files"] == [
            "counter_archive.db",
            "histogram_archive.db",
            "summary_archive.db",
        ]
    print(f"\n{mode}: {len(report['files'])} files after 60 requests, scrape {report['ms']:.2f} ms")


@pytest.mark.parametrize("mode", ["forking", "prefork-accept"])
def test_a_request_whose_process_is_killed_counts_as_aborted(mode):
    server = make_server(mode)
    with serving(server, poll_interval=0.05):
        client = socket.create_connection(server.server_address, timeout=10)
        client.sendall(b"hang\n")
        if mode == "forking":
            busy = wait_until(lambda: server.active_children)
            pid = next(iter(busy))
        else:
            pid = wait_until(
                lambda: [w["pid"] for w in server.worker_stats() if w["state"] == "busy"]
            )[0]
        os.kill(pid, signal.SIGKILL)
        with client, contextlib.suppress(ConnectionResetError):
            assert client.recv(100) == b""  # EOF, or a reset: no answer either way
        if mode == "forking":
            wait_until(lambda: not server.active_children)
        else:
            wait_until(lambda: pool_of(server).restarts["crashed"] == 1)
        text = scrape(server)
    assert total(text, "sockherd_requests_total", outcome="aborted") == 1
    assert total(text, "sockherd_requests_total") == 1
