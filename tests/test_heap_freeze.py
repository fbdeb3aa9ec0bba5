"""gc.freeze() around fork: the child inherits a frozen heap and collects again, the parent
gets its collector back as it was; pool memory is exported."""

from __future__ import annotations

import subprocess
import sys

import pytest
from server_process import PROJECT_ROOT, metric_value, request_line, server_process


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server", ["PreforkTCPServer", "ForkingTCPServer"])
@pytest.mark.parametrize("freeze_heap", [True, False])
def test_children_inherit_a_frozen_heap_and_collect(server, freeze_heap):
    settings = {"workers": 1} if server.startswith("Prefork") else {}
    with server_process(
        server, "prefork_handlers:Commands", settings, freeze_heap=freeze_heap
    ) as running:
        reply = request_line(running.address, b"gc\n").decode().split()
        supervisor = running.pid
    pid, enabled, frozen = int(reply[0]), reply[1], int(reply[2])
    assert pid != supervisor
    assert enabled == "True"  # the child collects its own garbage
    startup = int(run_python("import gc; print(gc.get_freeze_count())"))  # 3.12 freezes some
    if freeze_heap:
        assert frozen > startup + 1000  # the modules, the server, the handler classes...
    else:
        assert frozen == startup


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_parent_gets_its_collector_back_as_it_was():
    out = run_python(
        "import gc\n"
        "from sockherd.server.heap_freeze import before_fork, after_fork_in_parent\n"
        "frozen = before_fork(True)\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "after_fork_in_parent(frozen)\n"
        "print(gc.isenabled(), gc.get_freeze_count())\n"
        "gc.disable(); gc.freeze(); before = gc.get_freeze_count()\n"
        "after_fork_in_parent(before_fork(True))\n"  # a program's own freeze stays as it is
        "print(gc.isenabled(), gc.get_freeze_count() == before)\n"
        "print(before_fork(False))\n"
    )
    assert out.split("\n")[:4] == ["False True", "True 0", "False True", "None"]


@pytest.mark.timeout(60)
def test_pool_memory_is_exported():
    with server_process(
        "PreforkTCPServer", "prefork_handlers:Commands", {"workers": 2},
        metrics_address=("127.0.0.1", 0),
    ) as running:  # fmt: skip
        request_line(running.address, b"echo x\n")
        body = running.scrape()
    pss = metric_value(body, "sockherd_pool_memory_bytes", kind="pss")
    uss = metric_value(body, "sockherd_pool_memory_bytes", kind="uss")
    rss = metric_value(body, "sockherd_pool_memory_bytes", kind="rss")
    ratio = metric_value(body, "sockherd_pool_shared_ratio")
    print(f"\n2 workers: PSS {pss / 2**20:.1f} MiB, USS {uss / 2**20:.1f} MiB, "
          f"RSS {rss / 2**20:.1f} MiB, shared ratio {ratio:.2f}")  # fmt: skip
    assert 0 < uss < pss < rss
    assert 0 < ratio < 1
