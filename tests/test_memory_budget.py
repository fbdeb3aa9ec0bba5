"""The autoscaler's memory budget on a real pool: over max_pool_memory, the fattest worker
(largest USS) is recycled first, and the pool comes back within budget."""

from __future__ import annotations

import psutil
import pytest
from conftest import wait_until
from server_process import metric_value, request_line, server_process

MIB = 2**20


@pytest.mark.timeout(60)
def test_over_budget_the_fattest_worker_is_recycled_first():
    settings = dict(
        workers=3, min_workers=3, max_workers=3, autoscale=True, min_spare_workers=0,
        max_spare_workers=3, autoscale_interval=0.1, max_pool_memory=120 * MIB,
        heartbeat_interval=0.1,
    )  # fmt: skip
    with server_process(
        "PreforkTCPServer", "prefork_handlers:Commands", settings,
        metrics_address=("127.0.0.1", 0),
    ) as running:  # fmt: skip
        supervisor = psutil.Process(running.pid)
        wait_until(lambda: len(supervisor.children()) == 3, timeout=20)
        before = metric_value(running.scrape(), "sockherd_pool_memory_bytes", kind="pss")
        fat = int(request_line(running.address, b"hoard 150\n").split()[0])
        others = {child.pid for child in supervisor.children()} - {fat}

        def recycled() -> bool:
            pids = {child.pid for child in supervisor.children()}
            return fat not in pids and len(pids) == 3

        wait_until(recycled, timeout=20)
        body = running.scrape()
        decisions = metric_value(
            body, "sockherd_autoscale_decisions_total", reason="memory_recycle"
        )
        after = wait_until(
            lambda: (
                (pss := metric_value(running.scrape(), "sockherd_pool_memory_bytes", kind="pss"))
                < 120 * MIB
                and pss
            ),
            timeout=20,
        )
        survivors = {child.pid for child in supervisor.children()}
    print(f"\n3 workers: total PSS {before / MIB:.0f} MiB, then one hoards 150 MiB: recycled; "
          f"{after / MIB:.0f} MiB after")  # fmt: skip
    assert decisions == 1
    assert others <= survivors  # only the fattest went
