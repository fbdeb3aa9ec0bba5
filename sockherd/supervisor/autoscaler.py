"""Opt-in autoscaling of a prefork pool on measured saturation, with a cool-down.

In the spirit of Apache prefork's spare servers and uWSGI's cheaper modes: the
pool should always have a few idle workers, no more.

* **Saturated** when fewer than `min_spare_workers` are idle, or connections are
  waiting in the listen backlog (Linux TCP_INFO): add workers, 1 then 2, 4, ...
  per `autoscale_interval` while saturation lasts (Apache's spawn-rate
  doubling), never above `max_workers`.
* **Over-provisioned** when more than `max_spare_workers` have been idle for a
  whole `autoscale_cooldown`: remove one worker, then wait another cool-down,
  never below `min_workers`.

The decision is a pure function of what the supervisor measured and when, so
it is tested without processes.
"""

from __future__ import annotations


class Autoscaler:
    """Turns (time, idle workers, queued connections) into a worker-count change."""

    def __init__(
        self,
        min_spare: int,
        max_spare: int,
        interval: float,
        cooldown: float,
    ) -> None:
        if max_spare < min_spare:
            raise ValueError(
                f"max_spare_workers ({max_spare}) must be at least min_spare_workers ({min_spare})"
            )
        self.min_spare = min_spare
        self.max_spare = max_spare
        self.interval = interval
        self.cooldown = cooldown
        self._next_up = 0.0
        self._step = 1
        self._surplus_since: float | None = None

    def decide(self, now: float, idle: int, queued: int) -> int:
        """How many workers to add (positive) or remove (negative) now."""
        if idle < self.min_spare or queued > 0:
            self._surplus_since = None
            if now < self._next_up:
                return 0
            step = self._step
            self._step = min(self._step * 2, 32)
            self._next_up = now + self.interval
            return step
        self._step = 1
        if idle > self.max_spare:
            if self._surplus_since is None:
                self._surplus_since = now
            elif now - self._surplus_since >= self.cooldown:
                self._surplus_since = now  # one step per cool-down
                return -1
            return 0
        self._surplus_since = None
        return 0
