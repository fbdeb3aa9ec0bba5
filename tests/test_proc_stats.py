"""Reading a process's CPU and memory through /proc, and finding its cgroup."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from sockherd.workers import cgroup_files, proc_stats
from sockherd.workers.proc_stats import ProcessReadings, read_process

pytestmark = pytest.mark.skipif(not proc_stats.PROC_AVAILABLE, reason="no /proc on this system")

# A child that makes `size` MiB of private memory, spins for CPU, says "ready" and waits for stdin.
CHILD = """
import sys, time
block = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
end = time.process_time() + float(sys.argv[2])
while time.process_time() < end:
    pass
print("ready", flush=True)
sys.stdin.readline()
"""


def start_child(mebibytes: int, cpu_seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(mebibytes), str(cpu_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def stop_child(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    child.wait(timeout=10)
    child.stdout.close()


@pytest.mark.timeout(30)
def test_a_childs_private_memory_and_cpu_time_are_read_from_outside():
    small, large = start_child(1, 0.0), start_child(64, 0.3)
    try:
        small_figures, large_figures = read_process(small.pid), read_process(large.pid)
        assert small_figures is not None and large_figures is not None
        assert large_figures.cpu_seconds >= 0.25
        assert large_figures.rss - small_figures.rss >= 60 << 20
        if large_figures.uss is not None:  # smaps_rollup (Linux 4.14+)
            assert large_figures.pss is not None and small_figures.uss is not None
            assert large_figures.uss - small_figures.uss >= 60 << 20
            assert large_figures.uss <= large_figures.pss <= large_figures.rss
            assert large_figures.uss + (large_figures.shared or 0) == large_figures.rss
    finally:
        stop_child(small)
        stop_child(large)


@pytest.mark.timeout(30)
def test_a_gone_process_reads_as_none_and_readings_are_cached_then_forgotten():
    child = start_child(1, 0.0)
    readings = ProcessReadings(max_age=60.0)
    first = readings.figures(child.pid)
    stop_child(child)
    assert read_process(child.pid) is None
    assert readings.figures(child.pid) is first  # cached within max_age
    readings.forget(child.pid)
    assert readings.figures(child.pid) is None
    readings.keep_only(set())
    assert readings.figures(os.getpid()) is not None


@pytest.mark.timeout(30)
def test_a_process_moved_into_a_new_memory_cgroup_is_found_there():
    own = cgroup_files.controller_dir("memory")
    if own is None or own.version != 1:
        pytest.skip("the test creates a cgroup v1 memory group; this host has none writable")
    group = os.path.join(own.path, f"sockherd-test-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(group)
    except OSError as error:
        pytest.skip(f"cannot create a memory cgroup here: {error}")
    child = start_child(1, 0.0)
    try:
        with open(os.path.join(group, "cgroup.procs"), "w") as procs:
            procs.write(str(child.pid))
        found = cgroup_files.controller_dir("memory", child.pid)
        assert found is not None and os.path.samefile(found.path, group)
        assert found.read_keyed("memory.oom_control").get("oom_kill") == 0
        assert found.read("no-such-file") is None
    finally:
        stop_child(child)
        os.rmdir(group)


def test_no_such_controller_is_none():
    assert cgroup_files.controller_dir("no-such-controller") is None
    assert cgroup_files.controller_dir("memory", 2**22 + 12345) is None
