"""A server in a subprocess: for tests whose clients run in threads of the pytest process (so
the pytest process never forks while they run), and for servers that change their own
limits or user.

Test side
---------
`ServerProcess(script)` runs `script` in a fresh interpreter (`python -c`), after a
preamble that puts the project and the tests on sys.path, sends logging to stderr as
`LEVEL name: message`, and imports `sockherd`, `prefork_handlers`, `resource` and the
script-side names below.  The script's server mixes in `ReportReady`, which prints one
JSON line on stdout once the server serves; the test reads it as `address`,
`metrics_port` and `pid` (`info` is the whole line).  The log goes to a file, so a
server whose log nobody reads never blocks on a full pipe: `log` is everything written
so far, `wait_for(text)` polls it until a line contains `text` (within a bounded time,
failing at once if the server died).  `command(line)` sends a `LimitCommands` line on
stdin and waits until the server applied it.  `stop()` sends SIGTERM and returns the
exit status; a `with` block stops the server (a prefork supervisor stops its workers).

`server_process(server, handler, settings, **attributes)` runs `sockherd.<server>` with
no script to write: prefork `settings` as keywords, `attributes` set on the instance
(read_timeout, metrics_address, ...), serving `handler` ("module:Class") on loopback.

Script side
-----------
`ReportReady`, `LimitCommands` (server mix-ins), `drop_to(uid)` (import everything
sockherd may import lazily, then become `uid`: the interpreter lives under /root,
which other users cannot read, so nothing may be imported after the switch),
`stop_on_sigterm(server)` (for servers that do not handle SIGTERM themselves) and
`serve_spec(spec)` (what `server_process()` runs).

`unprivileged_uid()` picks the uid a test drops a server to, or connects as.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import pkgutil
import pwd
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

TESTS = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(TESTS)

PREAMBLE = f"""\
import sys
sys.path[:0] = [{PROJECT_ROOT!r}, {TESTS!r}]
import resource
import prefork_handlers
import sockherd
from server_process import (
    LimitCommands, ReportReady, drop_to, serve_spec, start_logging, stop_on_sigterm,
)
start_logging()
"""


# --- the test side -----------------------------------------------------------------------


class ServerProcess:
    """A server script running in a subprocess; a context manager that stops it on exit."""

    def __init__(self, script: str, *, start_timeout: float = 20.0) -> None:
        self._log_file: Any = tempfile.TemporaryFile()
        self._log_read = 0  # bytes of the log file already in self._text
        self._text = b""
        env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + PROJECT_ROOT)
        self.process = subprocess.Popen(
            [sys.executable, "-c", PREAMBLE + textwrap.dedent(script)],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
        )
        try:
            self.info: dict[str, Any] = json.loads(self._read_ready_line(start_timeout))
        except BaseException:
            self.close()
            raise
        self.address: Any = tuple(self.info["address"])
        self.metrics_port: int | None = self.info.get("metrics_port")
        self.pid: int = self.info["pid"]

    def _read_ready_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.process.stdout], [], [], max(0.0, remaining))
            if not readable:
                raise AssertionError(f"the server did not start within {timeout} s:\n{self.log}")
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                self.process.wait(10)  # its last words are in the log once it has exited
                raise AssertionError(f"the server exited before it served:\n{self.log}")
            data += chunk
        return data.decode()

    @property
    def log(self) -> str:
        """Everything the server has written to stderr so far."""
        if self._log_file is not None:
            fd = self._log_file.fileno()
            # pread: the server shares this file's offset, which a seek would move.
            while chunk := os.pread(fd, 1 << 20, self._log_read):
                self._text += chunk
                self._log_read += len(chunk)
        return self._text.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until `text` has been logged `count` times; return the last such line."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None  # before reading: no line is missed
            lines = [line for line in self.log.splitlines() if text in line]
            if len(lines) >= count:
                return lines[count - 1]
            if exited:
                raise AssertionError(f"the server exited before logging {text!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s; log:\n{self.log}")
            time.sleep(0.01)  # polling the log file, as wait_until() polls a condition

    def command(self, line: str, timeout: float = 10.0) -> None:
        """Send a LimitCommands line ("nproc 1", "nproc max", "nofile full", "nofile
        restore") and wait until the server has applied it."""
        assert self.process.stdin is not None
        done = self.log.count(f"applied {line}\n")
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        self.wait_for(f"applied {line}", timeout, count=done + 1)

    def scrape(self, timeout: float = 10.0) -> str:
        """The server's /metrics page."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit (SIGKILL after `timeout`); the exit status.  Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait(timeout)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        return status

    def close(self) -> None:
        """Stop the server if it still runs; keep its log (`log`), release the file."""
        try:
            self.stop()
        finally:
            if self._log_file is not None:
                self.log  # noqa: B018 (reads the rest of the file)
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def server_process(
    server: str, handler: str, settings: dict[str, Any] | None = None, **attributes: Any
) -> Iterator[ServerProcess]:
    """Run `sockherd.<server>` (prefork `settings` as keywords, other `attributes` set on
    the instance, e.g. read_timeout, metrics_address) serving `handler` ("module:Class")."""
    spec = {"server": server, "handler": handler, "settings": settings or {}}
    with ServerProcess(f"serve_spec({dict(spec, attributes=attributes)!r})\n") as running:
        yield running


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


def _uid_mapped(uid: int) -> bool:
    """Whether this user namespace maps `uid` (setuid() to an unmapped one fails)."""
    try:
        with open("/proc/self/uid_map") as uid_map:
            ranges = [tuple(map(int, line.split())) for line in uid_map if line.strip()]
    except OSError:
        return True  # no user namespaces here: every uid is valid
    return any(inside <= uid < inside + count for inside, _outside, count in ranges)


@functools.cache
def unprivileged_uid() -> int:
    """A uid that no user account and no running process has: root may setuid() to any
    uid, and one nobody uses leaves per-user limits (RLIMIT_NPROC) to the test alone.
    Searched downwards from 65533 (below `nobody`), within this user namespace's map."""
    import psutil

    in_use = set()
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None:
            in_use.update(uids)
    for uid in range(65533, 999, -1):
        if uid in in_use or not _uid_mapped(uid):
            continue
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise RuntimeError("no unused uid between 1000 and 65533 on this machine")


# --- the script side ----------------------------------------------------------------------


def start_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def ready(**info: Any) -> None:
    """Tell the test about this server: one JSON line on stdout."""
    print(json.dumps(info), flush=True)


class ReportReady:
    """Mixed into a server: reports its address, metrics port (None without metrics) and
    pid once it serves (its first service_actions()) and its metrics endpoint listens."""

    _reported = False

    def service_actions(self) -> None:
        super().service_actions()  # type: ignore[misc]
        if self._reported:
            return
        from sockherd.metrics.service import endpoint_address

        metrics = endpoint_address(self)
        if metrics is None and getattr(self, "metrics_address", None) is not None:
            return  # the endpoint does not listen yet
        self._reported = True
        ready(
            address=list(self.server_address[:2]),  # type: ignore[attr-defined]
            metrics_port=None if metrics is None else metrics[1],
            pid=os.getpid(),
        )


class LimitCommands:
    """Mixed into a server: lines on stdin change this process's own limits, applied in
    the serve loop (service_actions), each acknowledged with "limits: applied LINE".
    Lowering a soft limit, or raising it back up to the hard one, needs no privilege."""

    _nofile = resource.getrlimit(resource.RLIMIT_NOFILE)

    def service_actions(self) -> None:
        super().service_actions()  # type: ignore[misc]
        if not select.select([0], [], [], 0)[0]:
            return
        for line in os.read(0, 4096).decode().splitlines():
            what, value = line.split()
            nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
            if what == "nproc":
                soft = nproc_hard if value == "max" else int(value)
                resource.setrlimit(resource.RLIMIT_NPROC, (soft, nproc_hard))
            elif value == "full":  # nofile: the next new fd fails with EMFILE
                resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), self._nofile[1]))
            else:
                resource.setrlimit(resource.RLIMIT_NOFILE, self._nofile)
            logging.getLogger("limits").warning("applied %s", line)


def _lowest_free_fd() -> int:
    fd = 0
    while True:  # fstat allocates no fd, unlike listing /proc/self/fd
        try:
            os.fstat(fd)
        except OSError:
            return fd
        fd += 1


def _import_everything_sockherd_may_import() -> None:
    import sockherd

    for module in pkgutil.walk_packages(sockherd.__path__, "sockherd."):
        if module.name != "sockherd.__main__":
            importlib.import_module(module.name)
    for name in ("ctypes", "mmap", "traceback", "multiprocess", "multiprocess.popen_fork"):
        importlib.import_module(name)
    importlib.import_module("multiprocess.connection")


def drop_to(uid: int) -> None:
    """Import what sockherd imports lazily while the files are readable, then become `uid`
    (its gid too, with no supplementary groups)."""
    _import_everything_sockherd_may_import()
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def stop_on_sigterm(server: Any) -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def serve_spec(spec: dict[str, Any]) -> None:
    """Build `sockherd.<spec["server"]>` on loopback, serve it until SIGTERM."""
    import sockherd

    cls = type("Server", (ReportReady, getattr(sockherd, spec["server"])), {})
    server = cls(("127.0.0.1", 0), _load(spec["handler"]), **spec["settings"])
    for name, value in spec["attributes"].items():
        setattr(server, name, tuple(value) if isinstance(value, list) else value)
    if not isinstance(server, sockherd.PreforkMixIn):  # a prefork supervisor handles TERM
        stop_on_sigterm(server)
    with server:
        server.serve_forever(poll_interval=0.05)
