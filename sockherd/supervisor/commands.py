"""The control socket's commands, carried out by the Arbiter (see `control` for the protocol).

    status        the public snapshot, plus the summary fields older clients read:
                  {"ok": true, "state": "running", "desired": 4, "generation": 0,
                   "workers": [...], "requests_total": N, "in_progress": N,
                   "drain_seconds_left": null, "restarts": {...}, "exits": {...}, ...}
    scale N       set the desired worker count of every pool (N, +N or -N)
    reload        rolling reload, as SIGHUP
    refork        promote each pool's busiest worker to template of the next generation
    upgrade       in-place upgrade, as SIGUSR2: {"ok": true, "upgrade": ID, "timeout": S};
                  `status` then shows {"upgrade": {"id": ID, "outcome": ..., "reason": ...}}
    stop          graceful stop, as SIGTERM

With several listeners, each worker in `workers` carries its server's label.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from ..metrics.snapshot import SupervisorSnapshot
from ..metrics.status_json import worker_json

if TYPE_CHECKING:
    from .arbiter import Arbiter

COMMANDS = "status, scale N, reload, refork, upgrade, stop"


def control_command(arbiter: Arbiter, line: str) -> dict[str, Any]:
    """Carry out one command line and describe the result."""
    command, _, argument = line.partition(" ")
    argument = argument.strip()
    if command == "status":
        return status_reply(arbiter.snapshot())
    if command == "scale":
        if not arbiter.pools:
            return {"ok": False, "error": "scale needs a prefork server: there is no pool"}
        try:
            number = int(argument)
        except ValueError:
            return {"ok": False, "error": f"scale needs a number (N, +N or -N), not {argument!r}"}
        relative = argument[:1] in "+-"
        pools = arbiter.pools.values()
        desired = [pool.scale_by(number) if relative else pool.scale_to(number) for pool in pools]
        return {"ok": True, "desired": sum(desired)}
    if command == "reload":
        if not arbiter.reload():
            return {
                "ok": False,
                "error": "cannot reload: no worker pool, or the supervisor is "
                + arbiter.state.current.value,
            }
        return {"ok": True, "generation": arbiter.generation}
    if command == "refork":
        replies = [pool.reforker.refork_now() for pool in arbiter.pools.values()]
        if not replies or any(reply.startswith("error") for reply in replies):
            return {"ok": False, "error": "; ".join(replies) or "refork needs a prefork server"}
        return {"ok": True, "reforks": replies}
    if command == "upgrade":
        return arbiter.upgrader.request("ctl upgrade")
    if command == "stop":
        arbiter.begin_drain(graceful=True, why="ctl stop")
        return {"ok": True}
    return {"ok": False, "error": f"unknown command {command!r}; commands: {COMMANDS}"}


def status_reply(snapshot: SupervisorSnapshot) -> dict[str, Any]:
    """`status`: the snapshot, with the pools summed up for a quick look."""
    several = len(snapshot.servers) > 1
    workers: list[dict[str, Any]] = []
    restarts: collections.Counter[str] = collections.Counter()
    exits: collections.Counter[str] = collections.Counter()
    desired = 0
    generation = 0
    requests_total = 0
    for server in snapshot.servers:
        requests_total += sum(server.requests.values())
        pool = server.pool
        if pool is None:
            continue
        desired += pool.desired
        generation = max(generation, pool.generation)
        restarts.update(pool.restarts)
        exits.update(pool.exits)
        for worker in pool.workers:
            row = worker_json(worker)
            if several:
                row["server"] = server.label
            workers.append(row)
    return {
        "ok": True,
        "state": snapshot.state,
        "pid": snapshot.pid,
        "uptime": round(snapshot.uptime, 3),
        "in_progress": snapshot.in_progress,
        "drain_seconds_left": snapshot.drain_seconds_left,
        "desired": desired,
        "generation": generation,
        "workers": workers,
        "requests_total": requests_total,
        "restarts": dict(restarts),
        "exits": dict(exits),
        "orphans_reaped": snapshot.orphans_reaped,
        "upgrade": snapshot.last_upgrade,
        "upgrades": dict(snapshot.upgrades),
        "images": snapshot.images,
        "servers": [
            {
                "server": server.label,
                "mode": server.mode,
                "in_progress": server.in_progress,
                "requests": dict(server.requests),
                "listen_queue": server.listen_queue,  # [waiting, backlog] or None
            }
            for server in snapshot.servers
        ],
    }
