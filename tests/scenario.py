"""Run a server script in a subprocess and follow what it logs, with bounded waits.

`Scenario(script)` starts `python -c PRELUDE + script` with the project and the
tests on sys.path and logging going to stderr as `LEVEL name: message`.  The
script prints one JSON line on stdout once it serves (see `READY`); the test
reads it as `scenario.info`.  `wait_for(text)` returns the first log line
containing `text`, waiting at most `timeout` seconds (select on the pipe, never
a blind sleep); `log` is everything read so far.

`drop_to_uid`: the script imports everything it needs, then runs as that uid
(the interpreter lives under /root, which other users cannot read, so nothing
may be imported after the switch).
"""

from __future__ import annotations

import json
import os
import pwd
import select
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(PROJECT_ROOT, "tests")
UNPRIVILEGED_UID = 1000  # the user a scenario drops to (cloudsdk on the development machines)


def unprivileged_user_exists() -> bool:
    """Whether UNPRIVILEGED_UID names a user on this machine."""
    try:
        pwd.getpwuid(UNPRIVILEGED_UID)
    except KeyError:
        return False
    return True


PRELUDE = textwrap.dedent(
    f"""
    import json, logging, os, resource, signal, socket, sys
    sys.path[:0] = [{PROJECT_ROOT!r}, {TESTS!r}]
    import sockherd
    import prefork_handlers
    # Everything sockherd imports lazily, loaded while the files are still readable.
    import ctypes, multiprocess, multiprocess.popen_fork, multiprocess.connection, traceback
    import sockherd.metrics.collector, sockherd.metrics.endpoint
    import sockherd.metrics.endpoint_security, sockherd.metrics.user_multiprocess
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )

    def drop_to(uid):
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    def stop_on_sigterm(server):
        signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())

    def ready(**info):
        print(json.dumps(info), flush=True)

    class LimitCommands:
        # Mixed into a server: lines on stdin change this process's own limits, applied in
        # the serve loop (service_actions), each acknowledged with "scenario: applied LINE".
        # Lowering a soft limit, or raising it back up to the hard one, needs no privilege.
        _nofile = resource.getrlimit(resource.RLIMIT_NOFILE)

        def service_actions(self):
            super().service_actions()
            import select  # already imported by sockherd
            if not select.select([0], [], [], 0)[0]:
                return
            for line in os.read(0, 4096).decode().splitlines():
                what, value = line.split()
                nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
                if what == "nproc":
                    soft = nproc_hard if value == "max" else int(value)
                    resource.setrlimit(resource.RLIMIT_NPROC, (soft, nproc_hard))
                elif value == "full":  # nofile: the next new fd fails with EMFILE
                    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_fd(), self._nofile[1]))
                else:
                    resource.setrlimit(resource.RLIMIT_NOFILE, self._nofile)
                logging.getLogger("scenario").warning("applied %s", line)

    def lowest_free_fd():
        fd = 0
        while True:  # fstat allocates no fd, unlike listing /proc/self/fd
            try:
                os.fstat(fd)
            except OSError:
                return fd
            fd += 1

    class ReportMetricsPort:
        # Mixed into a server: tells the test the metrics port once the endpoint listens.
        _reported = False

        def service_actions(self):
            super().service_actions()
            from sockherd.metrics.service import endpoint_address

            metrics = endpoint_address(self)
            if metrics is not None and not self._reported:
                self._reported = True
                ready(address=list(self.server_address), metrics=metrics[1], pid=os.getpid())
    """
)


class Scenario:
    """A server script running in a subprocess; a context manager that kills it on exit."""

    def __init__(self, script: str, *, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.log = ""
        self._pending = b""
        self._stopped = False
        try:
            self.info: dict[str, Any] = json.loads(self._read_stdout_line(timeout))
        except BaseException:
            self.process.kill()
            self.stop()
            raise

    @property
    def pid(self) -> int:
        """The server process's pid."""
        return self.process.pid

    def _read_stdout_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.process.stdout], [], [], max(0.0, remaining))
            if not readable:
                raise AssertionError(
                    f"the scenario did not start within {timeout} s: {self.drain()}"
                )
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"the scenario exited before it served: {self.drain()}")
            data += chunk
        return data.decode()

    def _read_stderr(self, timeout: float) -> bool:
        """Read what stderr has within `timeout`; False at EOF."""
        assert self.process.stderr is not None
        readable, _, _ = select.select([self.process.stderr], [], [], max(0.0, timeout))
        if not readable:
            return True
        chunk = os.read(self.process.stderr.fileno(), 65536)
        if not chunk:
            return False
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self.log += line.decode(errors="replace") + "\n"
        return True

    def command(self, line: str, timeout: float = 10.0) -> None:
        """Send a LimitCommands line ("nproc 1", "nproc max", "nofile full", "nofile
        restore") and wait until the server has applied it."""
        assert self.process.stdin is not None
        done = self.log.count(f"applied {line}\n")
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        self.wait_for(f"applied {line}", timeout, count=done + 1)

    def drain(self) -> str:
        """Everything logged so far (reads what is waiting without blocking)."""
        while self._read_stderr(0) and self._has_input():
            pass
        return self.log

    def _has_input(self) -> bool:
        assert self.process.stderr is not None
        return bool(select.select([self.process.stderr], [], [], 0)[0])

    def wait_for(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until `text` has been logged `count` times; return the last such line."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log.splitlines() if text in line]
            if len(lines) >= count:
                return lines[count - 1]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} not logged within {timeout} s; log:\n{self.log}")
            if not self._read_stderr(remaining):
                raise AssertionError(f"the scenario exited before logging {text!r}:\n{self.log}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit, collect the rest of the log; the exit status."""
        if self._stopped:
            return self.process.returncode
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate(timeout=timeout)
        self.log += (self._pending + err).decode(errors="replace")
        self._pending = b""
        return self.process.returncode

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()  # SIGTERM first: a prefork supervisor stops its workers
