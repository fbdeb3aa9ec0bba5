"""A process's CPU time and memory, read from outside it through /proc (Linux).

The supervisor reads its workers' figures at status or scrape time without asking
them anything: CPU seconds from `/proc/PID/stat` (user + system, in clock ticks),
and from `/proc/PID/smaps_rollup` (Linux 4.14+) the resident set (RSS), the
proportional set (PSS: each shared page divided among the processes sharing it),
the unique set (USS: private pages, what killing the process would free) and the
shared bytes.  Where smaps_rollup is missing, RSS comes from `/proc/PID/statm` and
PSS, USS and shared are None.  Reading smaps_rollup walks the page tables (about
0.1-1 ms for a worker), so `ProcessReadings` caches each pid's figures for up to
a second.  On a system without /proc every reading is None and one note is logged.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

logger = logging.getLogger("sockherd.proc")

PROC_AVAILABLE = os.path.isdir("/proc/self")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_ROLLUP_FIELDS = {
    b"Rss:": "rss",
    b"Pss:": "pss",
    b"Shared_Clean:": "shared",
    b"Shared_Dirty:": "shared",
    b"Private_Clean:": "uss",
    b"Private_Dirty:": "uss",
}


@dataclass(frozen=True)
class ProcessFigures:
    """One reading of a process: CPU seconds and memory in bytes (None: not available)."""

    cpu_seconds: float
    rss: int
    pss: int | None
    uss: int | None
    shared: int | None


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        # comm may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _rollup(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            lines = rollup.read().splitlines()
    except FileNotFoundError:
        if os.path.isdir(f"/proc/{pid}"):
            return None  # an older kernel: no rollup
        raise ProcessLookupError(pid) from None
    figures = {"rss": 0, "pss": 0, "shared": 0, "uss": 0}
    for line in lines[1:]:
        key, _, rest = line.partition(b" ")
        name = _ROLLUP_FIELDS.get(key)
        if name is not None:
            figures[name] += int(rest.split()[0]) * 1024
    return figures


def _statm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def read_process(pid: int) -> ProcessFigures | None:
    """The figures of process `pid` now, or None if it is gone, unreadable or /proc is missing."""
    if not PROC_AVAILABLE:
        return None
    try:
        cpu = _cpu_seconds(pid)
        rollup = _rollup(pid)
        if rollup is None:
            return ProcessFigures(cpu, _statm_rss(pid), None, None, None)
        return ProcessFigures(cpu, rollup["rss"], rollup["pss"], rollup["uss"], rollup["shared"])
    except (OSError, ValueError, IndexError, ProcessLookupError):
        return None


class ProcessReadings:
    """Cached figures per pid: a pid's reading is reused for `max_age` seconds.

    One owner (the supervisor) calls `figures()` at status or scrape time and
    `forget()` when it reaps a pid.  Not thread-safe; the supervisor has one thread.
    """

    def __init__(self, max_age: float = 1.0) -> None:
        self.max_age = max_age
        self._cache: dict[int, tuple[float, ProcessFigures | None]] = {}
        self._noted = False

    def figures(self, pid: int) -> ProcessFigures | None:
        """`pid`'s figures, read at most `max_age` seconds ago; None if unavailable."""
        now = time.monotonic()
        cached = self._cache.get(pid)
        if cached is not None and now - cached[0] < self.max_age:
            return cached[1]
        if not PROC_AVAILABLE and not self._noted:
            self._noted = True
            logger.info("no /proc here: worker CPU and memory figures are not available")
        reading = read_process(pid)
        self._cache[pid] = (now, reading)
        return reading

    def forget(self, pid: int) -> None:
        """Drop `pid`'s cached reading (it was reaped; the pid may be reused)."""
        self._cache.pop(pid, None)

    def keep_only(self, pids: set[int]) -> None:
        """Drop every cached reading whose pid is not in `pids`."""
        for pid in [pid for pid in self._cache if pid not in pids]:
            del self._cache[pid]
