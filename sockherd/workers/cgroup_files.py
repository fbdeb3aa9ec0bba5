"""Where a process's cgroup lives, and reading its files (Linux, cgroup v1 and v2).

A process belongs to one cgroup per v1 hierarchy (`/proc/PID/cgroup` lines such as
`4:memory:/docker/abc`) and to one cgroup of the unified v2 hierarchy (`0::/abc`).
The directory of that cgroup is the hierarchy's mount point (from
`/proc/self/mountinfo`) joined with the path, less the mount's own root (a
container sees its cgroup mounted as `/`).  A v1 controller line wins over v2 on
hybrid hosts, where v2 is mounted but the controllers are v1's.

Everything here returns None where the files are missing (another OS, no /proc,
a controller not mounted); callers degrade with one note of their own.  The pool
sizes itself from the `cpu` and `memory` limits, and the supervisor reads the
`memory` controller's OOM-kill counter to attribute a SIGKILL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ControllerDir:
    """The directory of a process's cgroup for one controller, and the cgroup version."""

    path: str
    version: int  # 1 or 2

    def read(self, name: str) -> str | None:
        """The stripped text of the file `name` in this cgroup, or None if unreadable."""
        try:
            with open(os.path.join(self.path, name), encoding="utf-8") as file:
                return file.read().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def read_keyed(self, name: str) -> dict[str, int]:
        """A file of `key value` lines (memory.events, memory.oom_control) as a dict; {} if none."""
        values: dict[str, int] = {}
        for line in (self.read(name) or "").splitlines():
            key, _, number = line.partition(" ")
            try:
                values[key] = int(number)
            except ValueError:
                continue
        return values


def _mounts() -> list[tuple[str, str, str, str]]:
    """(fstype, mount point, mount root, super options) of every cgroup mount."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
            for line in mountinfo:
                before, _, after = line.partition(" - ")
                fields, tail = before.split(), after.split()
                if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                    found.append((tail[0], fields[4], fields[3], tail[2]))
    except OSError:
        return []
    return found


def _membership(pid: int | str) -> list[tuple[str, str]]:
    """(controllers, path) of each line of /proc/PID/cgroup; '' controllers for v2."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as cgroup:
            lines = cgroup.read().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            entries.append((parts[1], parts[2]))
    return entries


def _join(mount_point: str, mount_root: str, path: str) -> str:
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root) :]
    return os.path.join(mount_point, path.lstrip("/"))


def controller_dir(controller: str, pid: int | str = "self") -> ControllerDir | None:
    """The cgroup directory of process `pid` for `controller` ("cpu", "memory"), or None.

    v1 if the controller is mounted as a v1 hierarchy, else v2 if the unified
    hierarchy has it enabled for that cgroup; None when neither (or no /proc).
    """
    membership = _membership(pid)
    mounts = _mounts()
    for controllers, path in membership:
        if controller in controllers.split(","):
            for fstype, point, root, options in mounts:
                if fstype == "cgroup" and controller in options.split(","):
                    return ControllerDir(_join(point, root, path), 1)
    for controllers, path in membership:
        if controllers == "":
            for fstype, point, root, _options in mounts:
                if fstype == "cgroup2":
                    found = ControllerDir(_join(point, root, path), 2)
                    if controller in (found.read("cgroup.controllers") or "").split():
                        return found
    return None
