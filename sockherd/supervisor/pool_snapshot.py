"""A pool as the public snapshot describes it (`metrics.snapshot.PoolSnapshot`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..metrics.snapshot import PoolSnapshot, SlotFigures, WorkerSnapshot
from ..workers.lifecycle import WorkerState
from .pool_memory import shared_ratio
from .worker_exits import RestartReason

if TYPE_CHECKING:
    from .worker_pool import WorkerPool


def pool_snapshot(pool: WorkerPool) -> PoolSnapshot:
    """Read the pool's workers from the scoreboard and its counters from the pool."""
    scoreboard = pool.scoreboard
    now_monotonic, now_wall = time.monotonic(), time.time()
    workers = []
    for index in sorted(pool.workers):
        slot = scoreboard.slots[index]
        handle = pool.workers[index]
        workers.append(
            WorkerSnapshot(
                slot=index,
                pid=handle.pid,
                generation=slot.generation,
                state="template"
                if pool.reforker.is_template(handle)
                else scoreboard.state(index).name.lower(),
                requests=slot.requests,
                errors=slot.errors,
                age=round(now_monotonic - handle.started_at, 3),
                heartbeat_age=max(0.0, now_monotonic - slot.heartbeat),
                started_at=now_wall - (now_monotonic - slot.started),
            )
        )
    slots = []
    for index in range(scoreboard.size):
        totals = scoreboard.totals(index)
        if not (totals.requests or totals.timeouts or totals.aborted) and index not in pool.workers:
            continue  # a slot never used: no series
        slots.append(
            SlotFigures(
                slot=index,
                by_outcome={
                    "ok": totals.requests - totals.errors,
                    "error": totals.errors,
                    "timeout": totals.timeouts,
                    "aborted": totals.aborted,
                },
                buckets=tuple(totals.buckets),
                duration_sum=totals.duration_sum,
            )
        )
    memory = pool.memory.totals(pool.workers[index].pid for index in sorted(pool.workers))
    return PoolSnapshot(
        handoff=pool.settings.handoff,
        desired=pool.desired,
        generation=pool.generation,
        workers=tuple(workers),
        slots=tuple(slots),
        restarts={reason.value: pool.restarts[reason.value] for reason in RestartReason},
        exits=dict(pool.exit_counts),
        fork_failures=dict(pool.spawner.fork_failures.by_errno),
        dead_slots=tuple(
            (index, int(scoreboard.slots[index].pid))
            for index in range(scoreboard.size)
            if scoreboard.state(index) == WorkerState.DEAD
        ),
        memory=memory,
        shared_ratio=shared_ratio(memory),
        autoscale_decisions=dict(pool.autoscale_decisions),
    )
