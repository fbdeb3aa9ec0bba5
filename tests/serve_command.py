"""`sockherd serve` as a subprocess, for tests that drive the command from outside (ctl top
in a terminal, a real Prometheus scraping it): started, waited for, and always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from conftest import listening_address, wait_for_line

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(PROJECT_ROOT, "tests")
ENV = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + PROJECT_ROOT)
COMMANDS = "prefork_handlers:Commands"  # echo X, sleep S X, hold X, raise, ...


@contextlib.contextmanager
def prefork_supervisor(*options: str, workers: int = 2) -> Iterator[tuple[subprocess.Popen, Any]]:
    """`sockherd serve prefork_handlers:Commands --mode prefork --workers N OPTIONS...` on a
    free loopback port; yields the process and its address once every worker is ready, and
    stops it (TERM, then KILL after 30 s) on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "serve", COMMANDS, "--bind", "127.0.0.1:0",
         "--mode", "prefork", "--workers", str(workers), *options],
        cwd=PROJECT_ROOT, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        address = listening_address(wait_for_line(process.stderr, "listening on"))
        wait_for_line(process.stderr, f"{workers} workers ready")
        yield process, address
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM and wait (KILL after 30 s); a process already gone is only reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def ctl(control: str, *words: str) -> subprocess.CompletedProcess:
    """`sockherd ctl --control CONTROL WORDS...`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "sockherd", "ctl", "--control", control, *words],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
