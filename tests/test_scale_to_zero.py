"""Autoscaling on a real pool: scale to zero and the cold start, a load step from idle, and
steady load without flapping.

Time is scaled down for the tests: autoscale_interval 0.1 s and autoscale_cooldown 1 s
are the defaults (1 s, 10 s) divided by 10, so a phase of T seconds here stands for
10 T seconds at the defaults (every rule of the autoscaler is in units of those two).
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import pool_of, serving, tcp_request, wait_until
from prefork_handlers import Commands

import sockherd


def autoscaled(**settings):
    base = dict(
        workers=2, min_workers=0, max_workers=8, autoscale=True, min_spare_workers=1,
        max_spare_workers=2, autoscale_interval=0.1, autoscale_cooldown=1.0, idle_timeout=0.5,
        heartbeat_interval=0.2,
    )  # fmt: skip
    return sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, **{**base, **settings})


def live_workers(server) -> int:
    return len(server.pool_snapshot().workers) if server.pool_snapshot() else -1


def busy_workers(server) -> int:
    snapshot = server.pool_snapshot()
    return sum(1 for w in snapshot.workers if w.state == "busy") if snapshot else 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("handoff", ["accept", "dispatch"])
def test_an_idle_pool_scales_to_zero_and_a_connection_wakes_it(handoff):
    server = autoscaled(handoff=handoff)
    with serving(server, poll_interval=0.05):
        wait_until(lambda: live_workers(server) == 2, timeout=10)
        wait_until(lambda: live_workers(server) == 0, timeout=10)  # idle_timeout 0.5 s
        assert pool_of(server).desired == 0
        assert pool_of(server).autoscale_decisions["idle_timeout"] == 1
        began = time.monotonic()
        reply = tcp_request(server.server_address, b"echo cold\n", timeout=20)
        latency = time.monotonic() - began
        warm_began = time.monotonic()
        tcp_request(server.server_address, b"echo warm\n", timeout=20)
        warm = time.monotonic() - warm_began
        decisions = dict(pool_of(server).autoscale_decisions)
    print(f"\n{handoff}: cold start (0 workers -> answered) {latency * 1000:.0f} ms, "
          f"then warm {warm * 1000:.1f} ms")  # fmt: skip
    assert reply.split()[1] == b"cold"
    assert decisions["queued"] >= 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("idle_workers", [1, 0])
def test_a_load_step_from_idle_reaches_enough_workers_within_a_second(idle_workers):
    # the default interval (1 s): the emergency spawn must not wait for it
    if idle_workers:
        server = autoscaled(workers=1, min_workers=1, autoscale_interval=1.0, idle_timeout=None)
    else:  # scaled to zero first
        server = autoscaled(workers=1, autoscale_interval=1.0, idle_timeout=0.3)
    clients, replies = 6, []
    with serving(server, poll_interval=0.05):
        wait_until(lambda: live_workers(server) == idle_workers, timeout=10)
        wait_until(lambda: busy_workers(server) == 0, timeout=10)

        def client():
            replies.append(tcp_request(server.server_address, b"sleep 3 x\n", timeout=30))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        step_at = time.monotonic()  # the first connection waits from here
        for thread in threads:
            thread.start()
        wait_until(lambda: pool_of(server).desired >= clients, timeout=10)
        decided = time.monotonic() - step_at
        wait_until(lambda: busy_workers(server) >= clients, timeout=20)
        serving_all = time.monotonic() - step_at
        for thread in threads:
            thread.join(30)
    print(
        f"\nload step {idle_workers} idle -> {clients} busy: desired reached in "
        f"{decided * 1000:.0f} ms, all {clients} serving in {serving_all * 1000:.0f} ms"
    )
    assert len(replies) == clients
    assert decided < 1.0


@pytest.mark.timeout(90)
def test_steady_load_causes_less_than_one_scale_event_per_minute():
    server = autoscaled(workers=3, min_workers=1, max_spare_workers=3, idle_timeout=None)
    stop = threading.Event()
    served = []

    def client():
        deadline = time.monotonic() + 30  # bounded in time and in count
        for _ in range(2000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            served.append(tcp_request(server.server_address, b"sleep 0.03 x\n", timeout=10))

    with serving(server, poll_interval=0.05):
        wait_until(lambda: live_workers(server) == 3, timeout=10)
        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)  # warm-up: let the pool settle (the figure counted starts after it)
        before = sum(pool_of(server).autoscale_decisions.values())
        steady = 8.0  # 80 s at the default interval and cool-down
        time.sleep(steady)
        events = sum(pool_of(server).autoscale_decisions.values()) - before
        workers = live_workers(server)
        stop.set()
        for thread in threads:
            thread.join(15)
    print(
        f"\nsteady load, 3 clients: {events} scale events in {steady:.0f} s "
        f"(~{steady * 10:.0f} s at the defaults), {len(served)} requests, {workers} workers"
    )
    assert served
    assert events <= 1  # fewer than one per scaled minute


def test_min_workers_zero_needs_autoscale():
    import subprocess
    import sys

    from server_process import PROJECT_ROOT

    done = subprocess.run(
        [sys.executable, "-m", "sockherd", "serve", "sockherd.examples.echo:EchoHandler",
         "--mode", "prefork", "--min-workers", "0"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().endswith("--min-workers 0 (scale to zero) needs --autoscale")
    with pytest.raises(ValueError, match="needs autoscale"):
        sockherd.PreforkTCPServer(("127.0.0.1", 0), Commands, min_workers=0)
