"""The autoscaler at work in a pool: measure, decide, apply, and wake on a queued connection
while the pool has no worker.

Each tick `PoolAutoscale.tick()` measures the pool's current generation (live,
idle and booting workers from the scoreboard; the listen backlog from TCP_INFO;
requests finished; the workers' total PSS when a memory budget is set) and applies
the `Autoscaler`'s decision: `scale_by()` for a count, `stop_worker()` on the
fattest worker for a memory recycle (reconcile starts its replacement).  Each
decision that did something is counted by reason (`pool.autoscale_decisions`) and
logged at debug, with what was measured.

Scale to zero: a pool without workers runs no accept() anywhere -- accept mode's
workers are gone, and dispatch mode's supervisor accepts only for an idle worker --
so while the pool is empty the supervisor watches the listening socket itself
(a wake source on it: readable means a connection, or a datagram, waits).  The
watch is one-shot: the callback removes it, notes the demand and asks for a tick,
which spawns a worker; the connection waits in the backlog until that worker
accepts it (or, dispatch mode, the supervisor does once the worker is idle).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..server.listen_queue import queued_connections
from ..workers.lifecycle import WorkerState
from .autoscaler import Autoscaler

if TYPE_CHECKING:
    from .worker_pool import WorkerPool

log = logging.getLogger(__name__)

POOL_MEMORY_SHARE = 0.8  # of the cgroup memory limit: the default max_pool_memory


def memory_budget(max_pool_memory: int | None, memory_limit: int | None) -> int | None:
    """The budget in bytes: the setting (0: none), else a share of the cgroup limit."""
    if max_pool_memory is not None:
        return max_pool_memory or None
    if memory_limit is None:
        return None
    return int(memory_limit * POOL_MEMORY_SHARE)


class PoolAutoscale:
    """Drives one pool's `Autoscaler` from the supervisor's loop."""

    def __init__(self, pool: WorkerPool) -> None:
        settings = pool.settings
        self.pool = pool
        self.budget = memory_budget(settings.max_pool_memory, settings.memory_limit)
        self.rule = Autoscaler(
            settings.min_spare_workers,
            settings.max_spare_workers,
            settings.autoscale_interval,
            settings.autoscale_cooldown,
            min_workers=settings.min_workers,
            idle_timeout=settings.idle_timeout,
            max_spawn_rate=settings.max_spawn_rate,
            memory_budget=self.budget,
        )
        self.watching = False  # the listener is a wake source (the pool is empty)
        self.woken = False  # the listener turned readable while the pool was empty
        self.woken_at: float | None = None
        if self.budget is not None:
            log.info("pool memory budget: %.0f MiB of total PSS", self.budget / 2**20)

    def tick(self, now: float) -> None:
        """Measure, decide, apply; watch the listener while the pool has no worker."""
        pool = self.pool
        current = pool.current()
        states = [pool.scoreboard.state(h.index) for h in current]
        idle = states.count(WorkerState.IDLE)
        booting = states.count(WorkerState.STARTING)
        queued = queued_connections(pool.server.socket)
        if self.woken:
            queued = max(queued, 1)  # a datagram, or a connection TCP_INFO cannot count
        pss = pool.memory.total_pss(h.pid for h in current) if self.budget is not None else None
        requests = sum(pool.scoreboard.slots[h.index].requests for h in current)
        delta = self.rule.decide(
            now, idle, queued, workers=len(current), booting=booting, requests=requests, pss=pss
        )
        decision = self.rule.last
        if decision.reason:
            self._apply(delta, decision.recycle_fattest, decision.reason, idle, queued, pss)
        if pool.desired > 0 or current:
            self.woken = False
        self._watch(not current and pool.desired == 0)

    def _apply(
        self, delta: int, recycle: bool, reason: str, idle: int, queued: int, pss: int | None
    ) -> None:
        pool = self.pool
        before = pool.desired
        recycled = ""
        if recycle:
            victim = pool.memory.fattest(h.pid for h in pool.current())
            handle = next((h for h in pool.current() if h.pid == victim), None)
            if handle is None:
                return
            pool.stop_worker(handle)
            recycled = f", recycling the fattest worker (pid {handle.pid})"
        elif delta and pool.scale_by(delta) == before:
            return  # at a bound already: nothing changed
        pool.autoscale_decisions[reason] += 1
        log.debug(
            "autoscale (%s): %d idle, %d queued, PSS %s: %d -> %d workers%s",
            reason,
            idle,
            queued,
            "?" if pss is None else f"{pss / 2**20:.0f} MiB",
            before,
            pool.desired,
            recycled,
        )
        if reason == "queued" and self.woken_at is not None:
            log.debug("woken %.3f s ago by a waiting connection", time.monotonic() - self.woken_at)
            self.woken_at = None

    def _watch(self, wanted: bool) -> None:
        server = self.pool.server
        if wanted and not self.watching:
            server.add_wake_source(server.socket.fileno(), self._listener_readable)
            self.watching = True
        elif not wanted and self.watching:
            server.remove_wake_source(server.socket.fileno())
            self.watching = False

    def _listener_readable(self) -> None:
        """Something waits on the listener of an empty pool: wake it (one-shot)."""
        self._watch(False)
        self.woken = True
        self.woken_at = time.monotonic()
        self.pool.tick_due = True

    def close(self) -> None:
        """Stop watching the listener (the pool stops)."""
        self._watch(False)
