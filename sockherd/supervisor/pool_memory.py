"""A pool's memory, read from /proc: total PSS, USS, shared and RSS of its workers.

The supervisor reads each worker's `smaps_rollup` (through `ProcessReadings`, cached up
to a second per pid) when a snapshot is taken and when the autoscaler checks the
memory budget.  Totals are over the live workers: PSS sums to what the pool really
costs (a shared page is divided among its sharers), USS to what stopping every
worker would free, and `shared_ratio` (shared / RSS) says how much of the workers'
resident memory they share, with the supervisor and each other: what `gc.freeze()`
(and reforking) keep high.  Where /proc or smaps_rollup is missing the totals are
empty and the ratio None.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..workers.proc_stats import ProcessFigures, ProcessReadings

KINDS = ("pss", "uss", "shared", "rss")


class PoolMemory:
    """The memory figures of a pool's workers; one owner (the supervisor's loop)."""

    def __init__(self, readings: ProcessReadings | None = None) -> None:
        self.readings = readings if readings is not None else ProcessReadings()

    def figures(self, pid: int) -> ProcessFigures | None:
        """One worker's figures (cached up to a second), or None."""
        return self.readings.figures(pid)

    def totals(self, pids: Iterable[int], cached: bool = False) -> dict[str, int]:
        """{kind: bytes} summed over `pids` (pss, uss, shared, rss); {} if none could be read.

        `cached`: the last readings as they are (a status request: the pool refreshes
        them within a time budget per pass), rather than reading stale ones now.
        """
        sums = dict.fromkeys(KINDS, 0)
        readable = False
        read = self.readings.cached if cached else self.readings.figures
        for pid in pids:
            figures = read(pid)
            if figures is None or figures.pss is None:
                continue
            readable = True
            sums["pss"] += figures.pss
            sums["uss"] += figures.uss or 0
            sums["shared"] += figures.shared or 0
            sums["rss"] += figures.rss
        return sums if readable else {}

    def total_pss(self, pids: Iterable[int]) -> int | None:
        """The workers' total PSS in bytes; None where it cannot be read."""
        return self.totals(pids).get("pss")

    def fattest(self, pids: Iterable[int]) -> int | None:
        """The pid with the largest USS (what recycling it frees), or None."""
        best: tuple[int, int] | None = None
        for pid in pids:
            figures = self.readings.figures(pid)
            if figures is None or figures.uss is None:
                continue
            if best is None or figures.uss > best[0]:
                best = (figures.uss, pid)
        return best[1] if best else None

    def forget(self, pid: int) -> None:
        """A worker was reaped: drop its cached reading."""
        self.readings.forget(pid)


def shared_ratio(totals: dict[str, int]) -> float | None:
    """Shared bytes over resident bytes of the workers, 0..1; None without figures."""
    if not totals or not totals.get("rss"):
        return None
    return totals["shared"] / totals["rss"]
