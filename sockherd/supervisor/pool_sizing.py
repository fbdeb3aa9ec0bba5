"""How many workers a pool starts with by default, from the CPU and memory the process may
really use.

A container limited to 2 CPUs on a 64-core node sees `os.cpu_count() == 64`: sized by
that, the pool starts 64 workers that share 2 CPUs' worth of time.  The default count
comes, in this order, from:

1. the cgroup CPU quota (v2 `cpu.max` "QUOTA PERIOD", v1 `cpu.cfs_quota_us` /
   `cpu.cfs_period_us`), the smallest over the process's cgroup and its ancestors
   (a parent's limit binds its children), rounded up: a 1.5-CPU quota gives 2;
2. the CPU affinity mask (`os.sched_getaffinity`: taskset, cpuset);
3. `os.cpu_count()`.

The memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`, again the smallest over
the ancestors) is known to the pool: the autoscaler's default memory budget is a share
of it.  v1 writes "no limit" as a huge page-aligned number and v2 as "max"; any figure
at or above the machine's physical memory counts as no limit.

The functions take a `ControllerDir` so the tests can point them at a fake tree; a
missing controller (not Linux, no cgroup mounted) means no limit.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

from ..workers.cgroup_files import ControllerDir, controller_dir


def _ancestors(cgroup: ControllerDir) -> list[ControllerDir]:
    """The cgroup and its parents, up to the hierarchy's root (the first without `probe`)."""
    found = []
    path = cgroup.path
    while True:
        found.append(ControllerDir(path, cgroup.version))
        parent = os.path.dirname(path.rstrip("/"))
        if not parent or parent == path:
            return found
        path = parent


def _quota_of(cgroup: ControllerDir) -> float | None:
    if cgroup.version == 2:
        text = cgroup.read("cpu.max")
        if text is None:
            return None
        quota, _, period = text.partition(" ")
    else:
        quota, period = (
            cgroup.read("cpu.cfs_quota_us") or "",
            cgroup.read("cpu.cfs_period_us") or "",
        )
    try:
        quota_us, period_us = int(quota), int(period or "100000")
    except ValueError:
        return None  # "max", -1's absence, garbage: no limit here
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def cpu_quota(cgroup: ControllerDir | None) -> float | None:
    """CPUs' worth of time the cgroup (or an ancestor) allows, e.g. 2.0; None: no quota."""
    if cgroup is None:
        return None
    quotas = []
    for each in _ancestors(cgroup):
        probe = "cpu.max" if cgroup.version == 2 else "cpu.cfs_quota_us"
        if each.read(probe) is None:
            break  # above the hierarchy's mount: no more cgroup files
        quota = _quota_of(each)
        if quota is not None:
            quotas.append(quota)
    return min(quotas) if quotas else None


def physical_memory() -> int | None:
    """The machine's RAM in bytes, or None where sysconf does not tell."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit(cgroup: ControllerDir | None, physical: int | None = None) -> int | None:
    """The cgroup's (or an ancestor's) memory limit in bytes; None: unlimited."""
    if cgroup is None:
        return None
    ceiling = physical if physical is not None else physical_memory()
    name = "memory.max" if cgroup.version == 2 else "memory.limit_in_bytes"
    limits = []
    for each in _ancestors(cgroup):
        text = each.read(name)
        if text is None:
            break
        try:
            value = int(text)
        except ValueError:
            continue  # v2 "max"
        if value > 0 and (ceiling is None or value < ceiling) and value < 2**62:
            limits.append(value)
    return min(limits) if limits else None


def affinity_cpus() -> int | None:
    """CPUs the process may run on (its affinity mask), or None where not known."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class PoolSizing:
    """What was found, and the default worker count chosen from it."""

    cpu_count: int
    affinity: int | None
    quota: float | None
    memory_limit: int | None

    @property
    def workers(self) -> int:
        """One worker per usable CPU: the quota rounded up (at most the CPUs it may run on),
        else the affinity mask, else the CPU count."""
        usable = self.affinity or self.cpu_count
        if self.quota is not None:
            return max(1, min(math.ceil(self.quota - 1e-9), usable))
        return usable

    @property
    def max_workers(self) -> int:
        """Four workers per usable CPU."""
        return 4 * self.workers

    def describe(self) -> str:
        """One line: "4 workers (CPU quota 2.0 of 64 CPUs; memory limit 512 MiB)"."""
        count = self.workers
        cpus = f"{self.cpu_count} CPU{'' if self.cpu_count == 1 else 's'}"
        if self.quota is not None:
            why = f"CPU quota {round(self.quota, 2)} of {cpus}"
        elif self.affinity and self.affinity != self.cpu_count:
            why = f"affinity {self.affinity} of {cpus}"
        else:
            why = cpus
        memory = (
            f"memory limit {self.memory_limit / 2**20:.0f} MiB"
            if self.memory_limit is not None
            else "no memory limit"
        )
        return f"{count} worker{'' if count == 1 else 's'} ({why}; {memory})"


def detect(
    cpu: ControllerDir | None, memory: ControllerDir | None, physical: int | None = None
) -> PoolSizing:
    """The sizing from these cgroup directories (None: that controller is not there)."""
    return PoolSizing(
        cpu_count=os.cpu_count() or 1,
        affinity=affinity_cpus(),
        quota=cpu_quota(cpu),
        memory_limit=memory_limit(memory, physical),
    )


@functools.lru_cache(maxsize=1)
def host_sizing() -> PoolSizing:
    """This process's sizing, read once (the limits of a running process rarely change)."""
    return detect(controller_dir("cpu"), controller_dir("memory"))
