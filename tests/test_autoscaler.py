"""Autoscaling: the decision rule on a fake clock, then a real pool growing and shrinking."""

from __future__ import annotations

import threading

import pytest
from conftest import pool_of, serving, tcp_request, wait_until
from prefork_handlers import Commands

import sockherd
from sockherd.supervisor.autoscaler import Autoscaler


def scaler():
    return Autoscaler(min_spare=1, max_spare=2, interval=1.0, cooldown=10.0)


def test_saturation_adds_workers_doubling_per_interval():
    rule = scaler()
    assert rule.decide(0.0, idle=0, queued=0) == 1
    assert rule.decide(0.5, idle=0, queued=0) == 0  # within the interval
    assert rule.decide(1.0, idle=0, queued=0) == 2
    assert rule.decide(2.0, idle=0, queued=3) == 4


def test_the_step_resets_once_saturation_ends():
    rule = scaler()
    rule.decide(0.0, idle=0, queued=0)
    rule.decide(1.0, idle=0, queued=0)
    assert rule.decide(2.0, idle=1, queued=0) == 0
    assert rule.decide(3.0, idle=0, queued=0) == 1


def test_queued_connections_beyond_idle_and_booting_workers_spawn_at_once():
    rule = Autoscaler(min_spare=1, max_spare=2, interval=1.0, cooldown=10.0)
    assert rule.decide(0.0, idle=2, queued=1, workers=3) == 0  # an idle worker takes it
    assert rule.decide(0.0, idle=0, queued=5, workers=2) == 5  # not one per interval
    assert rule.last.reason == "queued"
    # 50 ms later the five are booting: nothing more, whatever the interval
    assert rule.decide(0.05, idle=0, queued=5, workers=7, booting=5) == 0
    assert rule.decide(0.1, idle=0, queued=8, workers=7, booting=5) == 3


def test_spawns_are_capped_by_max_spawn_rate_per_second():
    rule = Autoscaler(min_spare=1, max_spare=2, interval=0.1, cooldown=10.0, max_spawn_rate=4)
    assert rule.decide(0.0, idle=0, queued=10, workers=1) == 4
    assert rule.decide(0.5, idle=0, queued=10, workers=5, booting=0) == 0
    assert rule.decide(1.0, idle=0, queued=10, workers=5) == 4


def test_scale_to_zero_after_idle_timeout_and_a_connection_wakes_the_pool():
    rule = Autoscaler(1, 2, 1.0, 10.0, min_workers=0, idle_timeout=5.0)
    assert rule.decide(0.0, idle=2, queued=0, workers=2, requests=10) == 0
    assert rule.decide(4.0, idle=2, queued=0, workers=2, requests=11) == 0  # a request: active
    assert rule.decide(8.9, idle=2, queued=0, workers=2, requests=11) == 0
    assert rule.decide(9.0, idle=2, queued=0, workers=2, requests=11) == -2
    assert rule.last.reason == "idle_timeout"
    # an empty pool keeps no spare worker: only a waiting connection wakes it
    assert rule.decide(20.0, idle=0, queued=0, workers=0, requests=0) == 0
    assert rule.decide(30.0, idle=0, queued=1, workers=0, requests=0) == 1
    assert rule.last.reason == "queued"


def test_idle_timeout_keeps_min_workers():
    rule = Autoscaler(0, 4, 1.0, 10.0, min_workers=2, idle_timeout=5.0)
    rule.decide(0.0, idle=6, queued=0, workers=6, requests=0)
    assert rule.decide(5.0, idle=6, queued=0, workers=6, requests=0) == -4


def test_oscillation_doubles_the_cooldown_and_calm_halves_it():
    rule = scaler()
    rule.decide(0.0, idle=5, queued=0)
    assert rule.decide(10.0, idle=5, queued=0) == -1
    assert rule.decide(12.0, idle=0, queued=0) == 1  # needed back at once: it oscillates
    assert rule.effective_cooldown == 20.0
    rule.decide(13.0, idle=5, queued=0)
    assert rule.decide(25.0, idle=5, queued=0) == 0  # the longer cool-down holds
    assert rule.decide(33.0, idle=5, queued=0) == -1
    rule.decide(34.0, idle=5, queued=0)
    assert rule.decide(200.0, idle=5, queued=0) == -1  # a long calm: back to 10 s
    assert rule.effective_cooldown == 10.0


def test_memory_budget_holds_growth_and_recycles_the_fattest():
    rule = Autoscaler(1, 2, 1.0, 10.0, memory_budget=100)
    assert rule.decide(0.0, idle=0, queued=2, workers=3, pss=90) == 0  # 90 + 30 > 100
    assert rule.last.reason == "memory_hold"
    assert rule.decide(0.1, idle=0, queued=2, workers=3, pss=90) == 0
    assert rule.last.reason == ""  # one hold per episode
    assert rule.decide(0.2, idle=1, queued=0, workers=3, pss=120) == 0
    assert rule.last.recycle_fattest and rule.last.reason == "memory_recycle"
    rule.decide(0.5, idle=1, queued=0, workers=3, pss=120)
    assert not rule.last.recycle_fattest  # one per interval
    rule.decide(1.3, idle=1, queued=0, workers=3, pss=120, booting=1)
    assert not rule.last.recycle_fattest  # its replacement still boots


def test_surplus_removes_one_worker_per_cooldown():
    rule = scaler()
    assert rule.decide(0.0, idle=5, queued=0) == 0
    assert rule.decide(9.9, idle=5, queued=0) == 0
    assert rule.decide(10.0, idle=5, queued=0) == -1
    assert rule.decide(15.0, idle=5, queued=0) == 0
    assert rule.decide(20.0, idle=5, queued=0) == -1


def test_a_busy_moment_restarts_the_cooldown():
    rule = scaler()
    rule.decide(0.0, idle=5, queued=0)
    rule.decide(5.0, idle=1, queued=0)
    assert rule.decide(12.0, idle=5, queued=0) == 0


def test_max_spare_below_min_spare_is_refused():
    with pytest.raises(ValueError, match="max_spare_workers"):
        Autoscaler(min_spare=3, max_spare=1, interval=1, cooldown=1)


def test_pool_grows_under_load_and_shrinks_when_idle():
    server = sockherd.PreforkTCPServer(
        ("127.0.0.1", 0),
        Commands,
        workers=1,
        max_workers=4,
        autoscale=True,
        min_spare_workers=1,
        max_spare_workers=1,
        autoscale_interval=0.1,
        autoscale_cooldown=0.3,
        handoff="dispatch",
    )
    with serving(server, poll_interval=0.05):
        wait_until(lambda: server.worker_stats())
        grown = []

        def client():
            tcp_request(server.server_address, b"sleep 1.0 x\n", timeout=10)

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        wait_until(lambda: pool_of(server).desired >= 3, timeout=5)
        grown.append(pool_of(server).desired)
        for thread in clients:
            thread.join(10)
        wait_until(lambda: pool_of(server).desired <= 2, timeout=10)
    assert grown[0] >= 3


def test_the_fattest_worker_is_the_one_with_the_largest_uss():
    from sockherd.supervisor.pool_memory import PoolMemory
    from sockherd.workers.proc_stats import ProcessFigures

    class Readings:
        table = {1: ProcessFigures(0, 50, 30, 10, 40), 2: ProcessFigures(0, 90, 60, 45, 45)}

        def figures(self, pid):
            return self.table.get(pid)

    memory = PoolMemory(Readings())  # type: ignore[arg-type]
    assert memory.fattest([1, 2, 3]) == 2
    assert memory.totals([1, 2, 3]) == {"pss": 90, "uss": 55, "shared": 85, "rss": 140}


def test_the_default_budget_is_a_share_of_the_cgroup_limit():
    from sockherd.supervisor.pool_autoscale import memory_budget

    assert memory_budget(None, 1000) == 800
    assert memory_budget(None, None) is None
    assert memory_budget(0, 1000) is None  # 0: no budget
    assert memory_budget(500, 1000) == 500
