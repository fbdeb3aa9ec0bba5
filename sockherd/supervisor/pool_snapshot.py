"""A pool as the public snapshot describes it (`metrics.snapshot.PoolSnapshot`).

Worker CPU and memory come from `ProcessReadings` (a reading is refreshed once it
is 1 s old).  Reading a worker's smaps_rollup costs ~0.3 ms, too much to do for a
whole pool in a status request: a snapshot reads only workers never read before,
for at most `STATUS_READ_BUDGET` seconds, and reports the others' last reading;
from then on, for 10 s after each look, the pool's housekeeping re-reads stale
workers a few milliseconds per pass (`WorkerPool.refresh_readings`).  A small pool
is thus always fresh; a pool of 256 workers shows figures up to ~1.5 s old.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from ..metrics.snapshot import PoolSnapshot, SlotFigures, WorkerSnapshot
from ..workers import live_record
from ..workers.lifecycle import WorkerState
from ..workers.scoreboard import Slot
from .pool_memory import shared_ratio
from .worker_exits import RestartReason

if TYPE_CHECKING:
    from .worker_pool import WorkerPool

# Seconds of /proc reading one snapshot may spend (stalest workers first); the rest of a
# big pool is refreshed by the pool's housekeeping while someone watches.
STATUS_READ_BUDGET = 0.001

_STATE_NAMES = {state.value: state.name.lower() for state in WorkerState}


def pool_snapshot(pool: WorkerPool) -> PoolSnapshot:
    """Read the pool's workers from the scoreboard and its counters from the pool."""
    scoreboard = pool.scoreboard
    pool.refresh_readings(STATUS_READ_BUDGET, watched=True)
    now_monotonic, now_wall = time.monotonic(), time.time()
    workers = []
    for index in sorted(pool.workers):
        slot = scoreboard.slots[index]
        handle = pool.workers[index]
        request = peer = elapsed = None
        if scoreboard.request_in_hand(index) and slot.request_started:
            request, peer = live_record.read(slot)
            elapsed = round(max(0.0, now_monotonic - slot.request_started), 3)
        figures = pool.readings.cached(handle.pid)
        workers.append(
            WorkerSnapshot(
                slot=index,
                pid=handle.pid,
                generation=slot.generation,
                state="template" if pool.reforker.is_template(handle) else _STATE_NAMES[slot.state],
                requests=slot.requests,
                errors=slot.errors,
                age=round(now_monotonic - handle.started_at, 3),
                heartbeat_age=max(0.0, now_monotonic - slot.heartbeat),
                started_at=now_wall - (now_monotonic - slot.started),
                request=request,
                peer=peer,
                request_elapsed=elapsed,
                cpu_seconds=figures.cpu_seconds if figures else None,
                rss=figures.rss if figures else None,
                pss=figures.pss if figures else None,
                uss=figures.uss if figures else None,
                connections=scoreboard.requests_in_hand(index),
                **_threads(slot, scoreboard.state(index)),
            )
        )
    slots = []
    accepted = 0
    for index in range(scoreboard.size):
        folded = scoreboard.folded[index]
        if index not in pool.workers and not (folded.requests or folded.timeouts or folded.aborted):
            continue  # a slot never used (a released slot's own counters are zero): no series
        totals = scoreboard.totals(index)
        accepted += totals.requests + totals.timeouts + totals.aborted
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
    pids = (pool.workers[index].pid for index in sorted(pool.workers))
    memory = pool.memory.totals(pids, cached=True)
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
            (index, int(slot.pid))
            for index, slot in enumerate(scoreboard.slots)
            if slot.state == WorkerState.DEAD
        ),
        last_exits=tuple(pool.last_exits[index] for index in sorted(pool.last_exits)),
        exit_causes=dict(pool.exit_causes),
        slow_requests=pool.slow.count if pool.slow is not None else 0,
        accepted=accepted + sum(1 for i in pool.workers if scoreboard.request_in_hand(i)),
        max_workers_reached=pool.max_workers_reached,
        settings=dataclasses.asdict(pool.settings),
        memory=memory,
        shared_ratio=shared_ratio(memory),
        autoscale_decisions=dict(pool.autoscale_decisions),
    )


def _threads(slot: Slot, state: WorkerState) -> dict[str, int]:
    """A worker's thread pool size and busy threads; a sync worker is one thread."""
    if slot.threads > 1:
        return {"threads": slot.threads, "busy_threads": min(slot.busy_threads, slot.threads)}
    return {"threads": 1, "busy_threads": int(state == WorkerState.BUSY)}
