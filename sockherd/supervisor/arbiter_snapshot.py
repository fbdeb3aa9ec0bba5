"""The public snapshot of a supervised process, as the Arbiter knows it.

Every report -- `/metrics`, `ctl status`, the status page -- reads this one
frozen value (`metrics.snapshot`), built here at the moment it is asked for, from
the state each part owns: the Arbiter's state and drain deadline, each pool's
snapshot, each server's figures, the reaper's orphan count and the upgrades.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..metrics.snapshot import SupervisorSnapshot, server_snapshot
from .supervisor_state import State

if TYPE_CHECKING:
    from .arbiter import Arbiter


def arbiter_snapshot(arbiter: Arbiter) -> SupervisorSnapshot:
    """The public snapshot of `arbiter`'s process now."""
    extra: dict[str, int] = {}
    for source in (arbiter.metrics, arbiter.control):
        if source is not None:
            for name, value in source.accept_errors().items():
                extra[name] = extra.get(name, 0) + value
    servers = tuple(
        server_snapshot(
            server,
            arbiter.pools[server].snapshot() if server in arbiter.pools else None,
            extra if server is arbiter.host else None,
        )
        for server in arbiter.servers
    )
    left = None
    if arbiter.state.is_(State.DRAINING) and arbiter.drain_deadline is not None:
        left = max(0.0, round(arbiter.drain_deadline - time.monotonic(), 3))
    upgrader = arbiter.upgrader
    return SupervisorSnapshot(
        state=arbiter.state.current.value,
        pid=arbiter.pid,
        uptime=time.monotonic() - arbiter.started,
        drain_seconds_left=left,
        servers=servers,
        orphans_reaped=arbiter.reaper.orphans_reaped if arbiter.reaper is not None else 0,
        supervised=True,
        upgrades=dict(upgrader.counts),
        images=upgrader.images,
        last_upgrade=upgrader.status(),
    )
