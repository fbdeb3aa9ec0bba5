"""Opt-in autoscaling of a prefork pool: the decision rule, a pure function of what the
supervisor measured and when (tested on a fake clock, without processes).

Theory of operation (the best of Apache prefork, uWSGI's cheaper modes and php-fpm)
-----------------------------------------------------------------------------------
Each housekeeping tick the pool measures its current generation -- live workers,
how many are idle and how many still booting, connections waiting in the listen
backlog (Linux TCP_INFO; "the listener is readable" while the pool has no worker),
requests finished so far, the workers' total PSS -- and asks `decide()` for a
`Decision`: add or remove workers, or recycle the fattest, with a reason.

* **Emergency** (uWSGI's backlog alert): connections waiting beyond the idle
  workers (which take one each on their next accept) and the workers already
  booting get a worker each at once, without waiting for the interval.
* **Spare workers** (Apache): fewer than `min_spare` idle (or booting) workers add 1, 2, 4,
  ... per `interval` while that lasts; more than `max_spare` idle for a whole
  cool-down remove one, then wait another cool-down.  The gap between the two is
  the hysteresis.  Every start is capped by `max_spawn_rate` per second.
* **No flapping**: a scale-up within two cool-downs of a scale-down means the pool
  oscillates: the cool-down doubles (up to 8 times); it halves again after a long
  calm (four cool-downs without a scale-up).
* **Scale to zero** (php-fpm's ondemand): with `idle_timeout`, a pool that finished
  no request and had nothing queued for that long drops to `min_workers` (0
  allowed).  A pool with no worker does not keep spares: only a waiting
  connection wakes it.
* **Memory budget**: while the workers' total PSS would exceed `memory_budget`
  with one more worker, the pool does not grow; above the budget the fattest
  worker (largest USS) is recycled, one per interval, nothing booting meanwhile.

Reasons, as counted by `sockherd_autoscale_decisions_total{reason}`: queued,
spare_low, spare_high, idle_timeout, memory_hold, memory_recycle.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """What to do now: change the desired count by `delta`, or recycle the fattest worker."""

    delta: int = 0
    reason: str = ""
    recycle_fattest: bool = False


NOTHING = Decision()
MAX_COOLDOWN_FACTOR = 8


class Autoscaler:
    """Turns measurements of a pool into `Decision`s (see the module)."""

    def __init__(
        self,
        min_spare: int,
        max_spare: int,
        interval: float,
        cooldown: float,
        *,
        min_workers: int = 1,
        idle_timeout: float | None = None,
        max_spawn_rate: int = 32,
        memory_budget: int | None = None,
    ) -> None:
        if max_spare < min_spare:
            raise ValueError(
                f"max_spare_workers ({max_spare}) must be at least min_spare_workers ({min_spare})"
            )
        self.min_spare = min_spare
        self.max_spare = max_spare
        self.interval = interval
        self.cooldown = cooldown
        self.min_workers = min_workers
        self.idle_timeout = idle_timeout
        self.max_spawn_rate = max(1, max_spawn_rate)
        self.memory_budget = memory_budget
        self.cooldown_factor = 1
        self.last: Decision = NOTHING
        self._next_up = 0.0
        self._step = 1
        self._surplus_since: float | None = None
        self._last_active = 0.0
        self._requests: int | None = None
        self._last_up: float | None = None
        self._last_down: float | None = None
        self._next_recycle = 0.0
        self._holding = False
        self._spawned: collections.deque[tuple[float, int]] = collections.deque()

    def decide(
        self,
        now: float,
        idle: int,
        queued: int,
        *,
        workers: int | None = None,
        booting: int = 0,
        requests: int | None = None,
        pss: int | None = None,
    ) -> int:
        """How many workers to add (positive) or remove (negative) now; `self.last` holds
        the whole `Decision`.  `workers`: live workers (None: unknown, taken as active),
        `booting`: of those, not serving yet; `requests`: finished so far (activity);
        `pss`: the workers' total PSS in bytes."""
        self.last = self._decide(now, idle, queued, workers, booting, requests, pss)
        return self.last.delta

    @property
    def effective_cooldown(self) -> float:
        """The cool-down now: longer while the pool oscillates."""
        return self.cooldown * self.cooldown_factor

    def _decide(
        self,
        now: float,
        idle: int,
        queued: int,
        workers: int | None,
        booting: int,
        requests: int | None,
        pss: int | None,
    ) -> Decision:
        active = workers is None or workers > 0
        busy = workers is not None and idle + booting < workers
        if queued > 0 or busy or (requests is not None and requests != self._requests):
            self._last_active = now
        if self._requests is None:
            self._last_active = now
        self._requests = requests
        waiting = queued - idle - booting  # idle workers take a waiting connection themselves
        if waiting > 0 or (active and idle + booting < self.min_spare):
            return self._grow(now, max(0, waiting), workers, pss)
        self._step = 1
        self._holding = False
        over = self.memory_budget is not None and pss is not None and pss > self.memory_budget
        if over and booting == 0 and now >= self._next_recycle and workers:
            self._next_recycle = now + self.interval
            return Decision(0, "memory_recycle", recycle_fattest=True)
        if (
            self.idle_timeout is not None
            and workers is not None
            and workers > self.min_workers
            and now - self._last_active >= self.idle_timeout
        ):
            self._surplus_since = None
            self._down(now)
            return Decision(self.min_workers - workers, "idle_timeout")
        if idle > self.max_spare:
            if self._surplus_since is None:
                self._surplus_since = now
            elif now - self._surplus_since >= self.effective_cooldown:
                self._surplus_since = now  # one step per cool-down
                self._down(now)
                return Decision(-1, "spare_high")
            return NOTHING
        self._surplus_since = None
        return NOTHING

    def _grow(self, now: float, waiting: int, workers: int | None, pss: int | None) -> Decision:
        self._surplus_since = None
        if self._over_budget_with_one_more(workers, pss):
            if self._holding:
                return NOTHING
            self._holding = True
            return Decision(0, "memory_hold")
        self._holding = False
        ramp = 0
        if now >= self._next_up:
            ramp = self._step
            self._step = min(self._step * 2, self.max_spawn_rate)
            self._next_up = now + self.interval
        step = max(ramp, waiting)
        while self._spawned and now - self._spawned[0][0] >= 1.0:
            self._spawned.popleft()
        step = min(step, self.max_spawn_rate - sum(n for _, n in self._spawned))
        if step <= 0:
            return NOTHING
        self._spawned.append((now, step))
        if self._last_down is not None and now - self._last_down < 2 * self.effective_cooldown:
            self.cooldown_factor = min(self.cooldown_factor * 2, MAX_COOLDOWN_FACTOR)
            self._last_down = None
        self._last_up = now
        return Decision(step, "queued" if waiting >= ramp and waiting > 0 else "spare_low")

    def _down(self, now: float) -> None:
        calm_since = self._last_up if self._last_up is not None else 0.0
        if self.cooldown_factor > 1 and now - calm_since >= 4 * self.effective_cooldown:
            self.cooldown_factor //= 2
        self._last_down = now

    def _over_budget_with_one_more(self, workers: int | None, pss: int | None) -> bool:
        if self.memory_budget is None or pss is None or not workers:
            return False
        return pss + pss / workers > self.memory_budget
