"""Pool-level metric families: the workers' total memory by kind, the shared ratio, and the
autoscaler's decisions by reason (read from the snapshot, like every family)."""

from __future__ import annotations

from collections.abc import Iterator

from .exposition import Family, counter, gauge
from .snapshot import PoolSnapshot


def pool_memory_families(pools: list[tuple[str, PoolSnapshot]]) -> Iterator[Family]:
    """sockherd_pool_memory_bytes{server,kind}, sockherd_pool_shared_ratio{server},
    sockherd_autoscale_decisions_total{server,reason}."""
    memory = gauge(
        "sockherd_pool_memory_bytes",
        "Memory of a pool's workers, summed: pss, uss, shared, rss (smaps_rollup)",
    )
    ratio = gauge(
        "sockherd_pool_shared_ratio",
        "Shared bytes over resident bytes of a pool's workers (0..1)",
    )
    decisions = counter(
        "sockherd_autoscale_decisions",
        "Autoscaler decisions that changed the desired worker count, by reason",
    )
    for label, pool in pools:
        for kind, value in sorted(pool.memory.items()):
            memory.add({"server": label, "kind": kind}, value)
        if pool.shared_ratio is not None:
            ratio.add({"server": label}, pool.shared_ratio)
        for reason, count in sorted(pool.autoscale_decisions.items()):
            decisions.add({"server": label, "reason": reason}, count, "_total")
    yield from (memory, ratio, decisions)
