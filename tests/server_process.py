"""A sockherd server in a subprocess, for tests whose clients run in threads of the pytest
process (so the pytest process never forks while they run).

Run as a script, it builds the server described by one JSON argument, serves it
in its main thread, and prints one JSON line on stdout once the serve loop runs:
`{"address": [host, port], "metrics_port": N or null, "pid": PID}`.  SIGTERM stops
it gracefully (prefork servers handle it themselves; the others call shutdown()).
Its log (level INFO) goes to stderr.

`ServerProcess` is the test side: a context manager that starts the script,
waits for that line, and on exit stops the server and reaps it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from typing import Any

TESTS = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(TESTS)


class ServerProcess:
    """A running server subprocess: `address`, `metrics_port`, `pid`, `process`, `log()`."""

    def __init__(self, spec: dict[str, Any], start_timeout: float = 20.0) -> None:
        self.spec = spec
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + PROJECT_ROOT)
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(TESTS, "server_process.py"), json.dumps(spec)],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        try:
            ready, _, _ = select.select([self.process.stdout], [], [], start_timeout)
            line = self.process.stdout.readline() if ready else ""  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"the server did not start: {self.log()}")
            report = json.loads(line)
        except BaseException:
            self.stop()
            raise
        self.address: tuple[str, int] = tuple(report["address"])  # type: ignore[assignment]
        self.metrics_port: int | None = report["metrics_port"]
        self.pid: int = report["pid"]

    def log(self) -> str:
        """Everything the server has written to stderr so far."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def scrape(self, timeout: float = 10.0) -> str:
        """The server's /metrics page."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait (SIGKILL after `timeout`), close the pipes; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return status

    def close(self) -> None:
        """Stop the server if it still runs and release the log file."""
        try:
            if self.process.returncode is None:
                self.stop()
        finally:
            self._stderr.close()


@contextlib.contextmanager
def server_process(
    server: str, handler: str, settings: dict[str, Any] | None = None, **attributes: Any
) -> Iterator[ServerProcess]:
    """Run `sockherd.<server>` (prefork `settings` as keywords, other `attributes` set on
    the instance, e.g. read_timeout, metrics_address) serving `handler` ("module:Class")."""
    running = ServerProcess(
        {"server": server, "handler": handler, "settings": settings or {}, "attributes": attributes}
    )
    try:
        yield running
    finally:
        running.close()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        sample_labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(sample_labels.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


def request_line(address: tuple[str, int], line: bytes, timeout: float = 10.0) -> bytes:
    """Send `line` on a new connection and return the first line of the reply."""
    with socket.create_connection(address, timeout=timeout) as client:
        client.sendall(line)
        with client.makefile("rb") as reply:
            return reply.readline()


# --- the subprocess side ---------------------------------------------------------------


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def main(spec: dict[str, Any]) -> None:
    """Build the server from `spec`, report its addresses once serving, serve until TERM."""
    import sockherd

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    base = getattr(sockherd, spec["server"])
    reported = []

    class Reporting(base):  # type: ignore[misc, valid-type]
        def service_actions(self) -> None:
            super().service_actions()
            if not reported:
                reported.append(True)
                from sockherd.metrics.service import endpoint_address

                metrics = endpoint_address(self)
                report = {
                    "address": list(self.server_address[:2]),
                    "metrics_port": metrics[1] if metrics is not None else None,
                    "pid": os.getpid(),
                }
                print(json.dumps(report), flush=True)

    address = ("127.0.0.1", 0)
    handler = _load(spec["handler"])
    if spec["settings"]:
        server = Reporting(address, handler, **spec["settings"])
    else:
        server = Reporting(address, handler)
    for name, value in spec["attributes"].items():
        setattr(server, name, tuple(value) if isinstance(value, list) else value)
    if not isinstance(server, sockherd.PreforkMixIn):
        signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())
    with server:
        server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
