"""Pool sizing from the real limits: a fake cgroup v2 and v1 tree, then a real v1 cgroup with a
CPU quota that `sockherd serve --mode prefork` starts in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
from conftest import wait_for_line, wait_until
from server_process import PROJECT_ROOT, TESTS

from sockherd.supervisor.pool_sizing import PoolSizing, cpu_quota, detect, memory_limit
from sockherd.workers.cgroup_files import ControllerDir, controller_dir

GIB = 2**30


def tree(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def test_v2_cpu_max_and_memory_max(tmp_path):
    tree(tmp_path, {"cpu.max": "max 100000", "memory.max": "max",
                    "pod/cpu.max": "150000 100000",
                    "pod/memory.max": str(512 * 2**20)})  # fmt: skip
    pod = ControllerDir(str(tmp_path / "pod"), 2)
    assert cpu_quota(pod) == 1.5
    assert memory_limit(pod, physical=64 * GIB) == 512 * 2**20
    sizing = PoolSizing(cpu_count=64, affinity=64, quota=1.5, memory_limit=512 * 2**20)
    assert sizing.workers == 2 and sizing.max_workers == 8
    assert sizing.describe() == "2 workers (CPU quota 1.5 of 64 CPUs; memory limit 512 MiB)"


def test_v2_unlimited_everywhere(tmp_path):
    tree(tmp_path, {"cpu.max": "max 100000", "memory.max": "max", "a/cpu.max": "max 100000",
                    "a/memory.max": "max"})  # fmt: skip
    cgroup = ControllerDir(str(tmp_path / "a"), 2)
    assert cpu_quota(cgroup) is None
    assert memory_limit(cgroup, physical=64 * GIB) is None


def test_a_parents_limit_binds_its_child(tmp_path):
    tree(tmp_path, {"cpu.max": "200000 100000", "memory.max": str(GIB),
                    "child/cpu.max": "max 100000", "child/memory.max": str(4 * GIB)})  # fmt: skip
    child = ControllerDir(str(tmp_path / "child"), 2)
    assert cpu_quota(child) == 2.0
    assert memory_limit(child, physical=64 * GIB) == GIB


def test_v1_files_and_the_unlimited_huge_value(tmp_path):
    tree(tmp_path, {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000",
                    "memory.limit_in_bytes": "9223372036854771712",
                    "g/cpu.cfs_quota_us": "50000", "g/cpu.cfs_period_us": "100000",
                    "g/memory.limit_in_bytes": "9223372036854771712"})  # fmt: skip
    group = ControllerDir(str(tmp_path / "g"), 1)
    assert cpu_quota(group) == 0.5
    assert memory_limit(group, physical=64 * GIB) is None
    sizing = detect(group, group, physical=64 * GIB)
    assert sizing.workers == 1  # half a CPU rounds up to one worker


def test_a_limit_above_the_machines_memory_is_no_limit(tmp_path):
    tree(tmp_path, {"memory.max": str(128 * GIB)})
    assert memory_limit(ControllerDir(str(tmp_path), 2), physical=64 * GIB) is None


def test_without_a_quota_the_affinity_then_the_count_decide():
    assert PoolSizing(cpu_count=64, affinity=3, quota=None, memory_limit=None).workers == 3
    assert PoolSizing(cpu_count=8, affinity=None, quota=None, memory_limit=None).workers == 8
    assert "affinity 3 of 64 CPUs" in PoolSizing(64, 3, None, None).describe()
    # a quota larger than the CPUs the process may run on gives no more workers than those
    assert PoolSizing(cpu_count=4, affinity=2, quota=8.0, memory_limit=None).workers == 2


def test_missing_controllers_mean_no_limit():
    sizing = detect(None, None)
    assert sizing.quota is None and sizing.memory_limit is None
    assert sizing.workers == len(os.sched_getaffinity(0))


def writable_v1_cpu() -> ControllerDir | None:
    cpu = controller_dir("cpu")
    if cpu is None or cpu.version != 1 or os.geteuid() != 0:
        return None
    return cpu if os.access(os.path.join(cpu.path, "cgroup.procs"), os.W_OK) else None


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("quota", "workers", "why"), [
    (200000, 2, "CPU quota 2.0 of"),
    (50000, 1, "CPU quota 0.5 of"),
])  # fmt: skip
def test_serve_in_a_cgroup_with_a_cpu_quota(quota, workers, why):
    cpu = writable_v1_cpu()
    if cpu is None:
        pytest.skip("needs root and a writable cgroup v1 cpu controller")
    group = os.path.join(cpu.path, f"sockherd-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(group)
    process = None
    try:
        with open(os.path.join(group, "cpu.cfs_period_us"), "w") as period:
            period.write("100000")
        with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as quota_file:
            quota_file.write(str(quota))
        serve = [sys.executable, "-m", "sockherd", "serve", "prefork_handlers:Commands",
                 "--mode", "prefork", "--bind", "127.0.0.1:0"]  # fmt: skip
        process = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *serve],
            cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=TESTS), stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        sizing_line = wait_for_line(process.stderr, "CPU quota")
        ready = wait_for_line(process.stderr, "ready")
        print(f"\n{sizing_line.strip()}\n{ready.strip()}")
        assert f"{workers} worker{'' if workers == 1 else 's'} ({why}" in sizing_line
        assert f"{workers} worker{'' if workers == 1 else 's'} ready" in ready
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.communicate()
        # the workers die with the supervisor (SIGTERM): the group empties soon after
        wait_until(lambda: not open(os.path.join(group, "cgroup.procs")).read().strip(), 10)
        os.rmdir(group)
