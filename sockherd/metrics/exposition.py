"""Prometheus text exposition format 0.0.4, written without importing prometheus_client.

Why not prometheus_client's `generate_latest`: importing any part of
prometheus_client loads its whole package (http.server, wsgiref, email, ...),
about 12 MB of resident memory in the supervisor.  A ForkingMixIn server forks
once per request, and fork() costs grow with the parent's memory: measured,
that import alone took ~15% off fork-per-request throughput.  The format is
small, so sockherd writes it here; the tests parse every exposition with
prometheus_client's parser and lint it with `promtool check metrics`.

`Family` matches the attributes of prometheus_client's `Metric` (name, type,
documentation, samples of (name, labels, value)), so families collected by
prometheus_client itself (the multiprocess collector) render here as well.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Sample:
    """One line of an exposition."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    """A metric family: its name (without _total), type, help text and samples."""

    name: str
    type: str  # counter, gauge, histogram, info
    documentation: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        """Add the sample `name + suffix{labels} value`."""
        self.samples.append(Sample(self.name + suffix, labels, value))

    def add_histogram(
        self, labels: dict[str, str], bounds: Iterable[float], counts: Iterable[int], total: float
    ) -> None:
        """Add one histogram series: non-cumulative `counts` per bound, then +Inf."""
        cumulative = 0
        for bound, count in zip((*bounds, math.inf), counts, strict=True):
            cumulative += count
            self.add({**labels, "le": _format_value(bound)}, cumulative, "_bucket")
        self.add(labels, cumulative, "_count")
        self.add(labels, total, "_sum")


def counter(name: str, documentation: str) -> Family:
    """A counter family; add samples with suffix "_total"."""
    return Family(name, "counter", documentation)


def gauge(name: str, documentation: str) -> Family:
    """A gauge family."""
    return Family(name, "gauge", documentation)


def histogram(name: str, documentation: str) -> Family:
    """A histogram family; add series with `add_histogram()`."""
    return Family(name, "histogram", documentation)


def info(name: str, documentation: str, labels: dict[str, str]) -> Family:
    """An info family: one sample `name_info{labels} 1`."""
    family = Family(name, "info", documentation)
    family.add(labels, 1, "_info")
    return family


def _format_value(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def merge(families: Iterable[Any]) -> list[Any]:
    """One family per name, with every sample of the families of that name.

    Several servers served by one loop each yield their own families; the
    exposition must name each family once.  A sample repeated exactly (the
    process_* figures every collector reports) is kept once.
    """
    merged: dict[str, tuple[Any, list[Any], set[Any]]] = {}
    for family in families:
        entry = merged.get(family.name)
        if entry is None:
            entry = merged[family.name] = (family, [], set())
        _, samples, seen = entry
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in seen:
                seen.add(key)
                samples.append(sample)
    return [_with_samples(family, samples) for family, samples, _ in merged.values()]


def _with_samples(family: Any, samples: list[Any]) -> Any:
    if list(family.samples) == samples:
        return family
    return Family(family.name, family.type, family.documentation, samples)


def render(families: Iterable[Any]) -> bytes:
    """The text exposition of `families` (sockherd Families or prometheus_client Metrics)."""
    lines = []
    for family in families:
        name, kind = family.name, family.type
        if kind == "counter":
            exposed = name + "_total"
        elif kind == "info":
            exposed, kind = name + "_info", "gauge"
        else:
            exposed = name
        if kind not in ("counter", "gauge", "histogram", "summary"):
            kind = "untyped"
        lines.append(f"# HELP {exposed} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {exposed} {kind}")
        for sample in family.samples:
            sample_name, labels, value = sample.name, sample.labels, sample.value
            if labels:
                text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
                lines.append(f"{sample_name}{{{text}}} {_format_value(value)}")
            else:
                lines.append(f"{sample_name} {_format_value(value)}")
    lines.append("")
    return "\n".join(lines).encode()


def process_families() -> list[Family]:
    """The standard process_* and python_info metrics for this (the supervisor) process."""
    families = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = counter("process_cpu_seconds", "Total user and system CPU time spent in seconds.")
    cpu.add({}, usage.ru_utime + usage.ru_stime, "_total")
    families.append(cpu)
    memory = _proc_memory()
    if memory is not None:
        resident = gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
        resident.add({}, memory[1])
        virtual = gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.")
        virtual.add({}, memory[0])
        families += [virtual, resident]
    start = _start_time()
    if start is not None:
        started = gauge(
            "process_start_time_seconds", "Start time of the process since unix epoch in seconds."
        )
        started.add({}, start)
        families.append(started)
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    try:
        open_fds = gauge("process_open_fds", "Number of open file descriptors.")
        open_fds.add({}, len(os.listdir(fd_dir)))
        families.append(open_fds)
    except OSError:
        pass
    max_fds = gauge("process_max_fds", "Maximum number of open file descriptors.")
    max_fds.add({}, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    families.append(max_fds)
    version = sys.version_info
    families.append(
        info(
            "python",
            "Python platform information",
            {
                "implementation": platform.python_implementation(),
                "major": str(version.major),
                "minor": str(version.minor),
                "patchlevel": str(version.micro),
                "version": platform.python_version(),
            },
        )
    )
    return families


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_memory() -> tuple[int, int] | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            size, resident = statm.read().split()[:2]
    except OSError:
        return None
    return int(size) * _PAGE_SIZE, int(resident) * _PAGE_SIZE


def _start_time() -> float | None:
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as system:
            boot = next(float(line.split()[1]) for line in system if line.startswith(b"btime"))
    except (OSError, StopIteration, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return boot + int(fields[19]) / ticks
