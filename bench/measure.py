"""One measurement: start a server pinned to one CPU, load it from the other, stop it.

`measure(cell, settings)` returns the load generator's figures for one cell of
the matrix (a server, a protocol, a concurrency, new connections or
keep-alive, metrics on or off, our load generator or wrk).  The server runs in
a new session so that everything it forks is stopped with one SIGKILL to its
process group.  All traffic is on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import servers

STARTUP_TIMEOUT = 15.0  # seconds a server may take to print its port and answer a probe
ECHO_LINE = b"x" * 64 + b"\n"


class MeasurementFailed(Exception):
    """A server did not start or answer, or the load generator failed; says why."""


@dataclass(frozen=True)
class Cell:
    """What one measurement measures."""

    protocol: str  # "echo" or "http"
    server: str  # a name from servers.ECHO_SERVERS / HTTP_SERVERS
    concurrency: int
    connection: str  # "new" (a connection per request) or "keepalive"
    metrics: bool = False
    loadgen: str = "loadgen"  # or "wrk" (HTTP only)


@dataclass(frozen=True)
class Settings:
    """How long and how hard each measurement runs."""

    build_dir: str
    workers: int = 4
    duration: float = 2.0
    warmup: float = 0.3
    per_conn: int = 100  # requests per keep-alive connection
    timeout: float = 10.0  # per request, in the load generator
    server_cpu: int | None = 1
    loadgen_cpu: int | None = 0


def measure(cell: Cell, settings: Settings) -> dict:
    """Run one cell; return rps, latency figures (µs) and errors by kind."""
    metrics_port = free_port() if cell.metrics else None
    given_port = (
        free_port() if cell.server == "gunicorn-sync" or cell.server in servers.SERVE_SERVERS else 0
    )
    argv = servers.command(
        cell.server,
        sys.executable,
        settings.build_dir,
        settings.workers,
        given_port,
        metrics_port,
        keepalive=cell.protocol == "http" and cell.connection == "keepalive",
    )
    log_path = os.path.join(settings.build_dir, "server.log")
    with open(log_path, "w") as log:  # a server's stderr: shown only if it fails
        server = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_pin_to(settings.server_cpu),
        )
    try:
        port = given_port or _read_port(server)
        _probe(port, cell.protocol)
        if cell.loadgen == "wrk":
            return _run_wrk(port, cell, settings)
        return _run_loadgen(port, cell, settings)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        with open(log_path) as log:
            raise MeasurementFailed(f"{cell}: {error}\n{log.read()[-2000:]}") from error
    finally:
        _kill_group(server)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pin_to(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _read_port(server: subprocess.Popen) -> int:
    ready, _, _ = select.select([server.stdout], [], [], STARTUP_TIMEOUT)
    line = server.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        raise RuntimeError(f"server {server.args} did not print its port (got {line!r})")
    return int(line)


def _probe(port: int, protocol: str) -> None:
    """Wait until one real request succeeds (a prefork pool listens before its workers run)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    request = ECHO_LINE if protocol == "echo" else b"GET / HTTP/1.0\r\n\r\n"
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as probe:
                probe.sendall(request)
                probe.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := probe.recv(4096):
                    answer += chunk
            if answer == ECHO_LINE or answer.startswith(b"HTTP/1.") and b" 200 " in answer:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} never answered a probe")
        time.sleep(0.05)


def _run_loadgen(port: int, cell: Cell, settings: Settings) -> dict:
    argv = [
        os.path.join(settings.build_dir, "loadgen"),
        "--port",
        str(port),
        "--mode",
        cell.protocol,
        "--concurrency",
        str(cell.concurrency),
        "--duration",
        str(settings.duration),
        "--warmup",
        str(settings.warmup),
        "--per-conn",
        str(settings.per_conn if cell.connection == "keepalive" else 1),
        "--timeout",
        str(settings.timeout),
    ]
    limit = settings.warmup + settings.duration + settings.timeout + 10
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=limit,
        preexec_fn=_pin_to(settings.loadgen_cpu),
    )
    if result.returncode != 0:
        raise RuntimeError(f"loadgen failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


_WRK_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _run_wrk(port: int, cell: Cell, settings: Settings) -> dict:
    """wrk as a second opinion on the HTTP figures (no warm-up, its own percentiles)."""
    argv = [
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(cell.concurrency),
        "--duration",
        f"{max(1, round(settings.duration))}s",
        "--timeout",
        f"{int(settings.timeout)}s",
        "--latency",
    ]
    if cell.connection == "new":
        argv += ["--header", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/")
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=settings.duration + settings.timeout + 10,
        preexec_fn=_pin_to(settings.loadgen_cpu),
    )
    return _parse_wrk(result.stdout)


def _parse_wrk(text: str) -> dict:
    def latency(pattern: str) -> float:
        match = re.search(pattern + r"\s+([\d.]+)(us|ms|s|m)\b", text)
        return float(match.group(1)) * _WRK_UNITS_US[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    requests = re.search(r"(\d+) requests in", text)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    connect, read, write, timeout = map(int, socket_errors.groups()) if socket_errors else (0,) * 4
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    mean_max = re.search(r"Latency\s+([\d.]+)(us|ms|s|m)\s+\S+\s+([\d.]+)(us|ms|s|m)", text)
    return {
        "requests": int(requests.group(1)) if requests else 0,
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_us": latency(r"\b50%"),
        "p99_us": latency(r"\b99%"),
        "p999_us": float("nan"),  # wrk --latency prints 50/75/90/99 only
        "max_us": float(mean_max.group(3)) * _WRK_UNITS_US[mean_max.group(4)]
        if mean_max
        else float("nan"),
        "mean_us": float(mean_max.group(1)) * _WRK_UNITS_US[mean_max.group(2)]
        if mean_max
        else float("nan"),
        "errors": {
            "refused": connect,
            "reset": read + write,
            "timeout": timeout,
            "closed": 0,
            "bad": int(bad.group(1)) if bad else 0,
            "other": 0,
        },
    }


def _kill_group(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(10)
    if server.stdout is not None:
        server.stdout.close()
