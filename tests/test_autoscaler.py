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


def test_queued_connections_count_as_saturation_even_with_idle_workers():
    assert scaler().decide(0.0, idle=2, queued=1) == 1


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
