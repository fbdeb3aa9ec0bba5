"""`slow_request_timeout`: a request running that long gets its traceback logged, once.

Theory of operation (php-fpm's slowlog, for Python)
---------------------------------------------------
Each worker's live record holds when its request in hand began
(`workers.live_record`) and how many it has begun (`begun`).  The supervisor keeps,
per slot, the `begun` count it last reported, so each request is reported at most
once.  `next_deadline()` gives the monotonic time the earliest unreported busy
request crosses the threshold; the Arbiter's loop sleeps no longer than that
(a deadline-driven wait: the loop does not poll faster for everyone), and
`check()` then writes one header line -- worker, pid, the request's description,
its peer, how long it has run -- to the log or `slow_log`, and sends the worker
`SLOW_SIGNAL`, on which faulthandler writes every thread's Python traceback right
after (`workers.slow_traceback`).  The request keeps running;
`sockherd_slow_requests_total` counts it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import IO

from ..workers import live_record
from ..workers.scoreboard import Scoreboard
from ..workers.slow_traceback import SLOW_SIGNAL
from .pool_settings import PoolSettings
from .spawner import WorkerHandle

log = logging.getLogger("sockherd.slow")


class SlowRequests:
    """The slow-request watch of one pool."""

    def __init__(self, threshold: float, slow_log: str | None) -> None:
        self.threshold = threshold
        self.count = 0
        self.reported: dict[int, int] = {}  # slot -> the `begun` count last reported
        self.file: IO[str] | None = None
        if slow_log:
            try:
                self.file = open(slow_log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            except OSError as error:
                log.error(
                    "cannot open slow_log %s (%s): slow requests go to the log", slow_log, error
                )

    @classmethod
    def of(cls, settings: PoolSettings) -> SlowRequests | None:
        """The watch for a pool's settings; None without slow_request_timeout."""
        if not settings.slow_request_timeout:
            return None
        return cls(settings.slow_request_timeout, settings.slow_log)

    def _pending(self, scoreboard: Scoreboard, index: int) -> float | None:
        """When slot `index`'s request began, if it is in hand and not yet reported."""
        slot = scoreboard.slots[index]
        if not slot.request_started or self.reported.get(index) == slot.begun:
            return None
        if not scoreboard.request_in_hand(index):
            return None
        return float(slot.request_started)

    def next_deadline(self, scoreboard: Scoreboard, indexes: Iterable[int]) -> float | None:
        """The monotonic time the next unreported request becomes slow (None: none busy)."""
        earliest = None
        for index in indexes:
            began = self._pending(scoreboard, index)
            if began is not None and (earliest is None or began < earliest):
                earliest = began
        return None if earliest is None else earliest + self.threshold

    def check(self, scoreboard: Scoreboard, workers: Iterable[WorkerHandle], now: float) -> None:
        """Report each request that has crossed the threshold since the last check."""
        for handle in workers:
            began = self._pending(scoreboard, handle.index)
            if began is None or now - began < self.threshold:
                continue
            self.reported[handle.index] = scoreboard.slots[handle.index].begun
            self.count += 1
            request, peer = live_record.read(scoreboard.slots[handle.index])
            line = (
                f'worker {handle.index} (pid {handle.pid}) has been serving "{request}" '
                f"from {peer} for {now - began:.2f} s (slow_request_timeout="
                f"{self.threshold}); its traceback follows"
            )
            if self.file is not None:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                self.file.write(f"[{stamp}] {line}\n")
            else:
                log.warning("%s", line)
            try:
                os.kill(handle.pid, SLOW_SIGNAL)
            except ProcessLookupError:
                pass

    def forget(self, index: int) -> None:
        """Slot `index`'s worker is gone."""
        self.reported.pop(index, None)

    def close(self) -> None:
        """Close the slow log."""
        if self.file is not None:
            self.file.close()
            self.file = None
