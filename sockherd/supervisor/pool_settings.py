"""What a worker pool knows of its server: the prefork settings, resolved once, and the
small interface the pool's parts use (`PreforkServer`) and the Arbiter recognises
(`PoolServer`).

`PreforkMixIn.pool_settings()` builds the settings from the server's class
attributes or keyword settings when its supervisor starts; the pool and its parts
read only those.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..server.base_server import BaseServer
from .pool_sizing import host_sizing

if TYPE_CHECKING:
    from .reaper import ChildReaper
    from .worker_pool import WorkerPool


@dataclass(frozen=True)
class PoolSettings:
    """A pool's settings; see `PreforkMixIn` for what each means."""

    workers: int
    min_workers: int
    max_workers: int
    handoff: str  # "accept" or "dispatch"; always "accept" for a datagram server
    worker_timeout: float | None
    kill_grace: float
    graceful_timeout: float
    heartbeat_interval: float
    autoscale: bool
    min_spare_workers: int
    max_spare_workers: int
    autoscale_interval: float
    autoscale_cooldown: float
    slow_request_timeout: float | None = None
    slow_log: str | None = None
    threads: int = 1  # requests each worker serves at once (its thread pool)
    memory_limit: int | None = None  # the cgroup's memory limit in bytes, None: unlimited
    idle_timeout: float | None = None  # autoscale: idle this long -> min_workers (0 allowed)
    max_spawn_rate: int = 32  # autoscale: workers started per second at most
    max_pool_memory: int | None = None  # autoscale: total PSS budget (None: a share of the limit)
    refork_after: tuple[int, ...] = ()  # requests of a worker before the next refork


def default_workers() -> int:
    """One worker per CPU the process may use (cgroup quota, affinity, count: `pool_sizing`)."""
    return host_sizing().workers


def default_max_workers() -> int:
    """Four workers per CPU the process may use."""
    return host_sizing().max_workers


class PreforkServer(Protocol):
    """What the pool's parts need of a prefork server (a `PreforkMixIn` socket server)."""

    socket: socket.socket
    heartbeat_interval: float
    max_requests: int
    max_requests_jitter: int
    max_worker_memory: int | None
    freeze_heap: bool

    @property
    def loop_members(self) -> tuple[BaseServer, ...]: ...

    def add_wake_source(
        self, fd: int, callback: Callable[[], None], writable: bool = False
    ) -> None: ...

    def remove_wake_source(self, fd: int) -> None: ...

    def backlog_waiting(self) -> bool: ...

    def close_loop_fds(self) -> None: ...


@runtime_checkable
class PoolServer(Protocol):
    """A server the Arbiter runs a worker pool for (a `PreforkMixIn` server)."""

    graceful_timeout: float
    reap_orphans: bool | None

    def start_pool(
        self,
        reaper: ChildReaper,
        on_child_reaped: Callable[[int], None],
        carried: dict[str, Any] | None = None,
    ) -> WorkerPool: ...
