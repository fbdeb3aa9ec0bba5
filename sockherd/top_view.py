"""What `sockherd ctl top` shows: a `status` reply of the control socket as lines of text.

Theory of operation
-------------------
`frame(reply, previous)` is a pure function: it turns the reply of the control socket's
`status` command (see `supervisor.commands.status_reply`) into `Line`s -- a header with the
supervisor's state, a summary of the pools, each listener's queue (connections waiting in
its backlog, Linux TCP) and the last in-place upgrade, then one row per worker, busiest
first.
`sockherd.top` draws those lines with curses, once a second, or prints them once when
stdout is not a terminal; neither knows how a row is made.

Given the previous reply as well, `frame` adds rates (requests per second, per worker and
in total) from the difference between the two.  A worker's columns are the ones every
supervisor reports (slot, pid, state, requests, age) and, when the reply carries them, the
live record of each worker: `request_elapsed` (seconds into the request in hand), `cpu_seconds`,
`rss` and `pss` (bytes) and `request` (a description of the request in hand: a string, or
an object with a `description` or a `peer`).  A reply without those keys simply shows
fewer columns.

"Busiest first": busy workers before the others, the longest-running request first, then
the highest request rate, then the most requests served.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

STATES = ("busy", "idle", "starting", "stopping")


@dataclasses.dataclass(frozen=True)
class Line:
    """One line of the view and how to show it: `title`, `summary`, `header`, or a worker
    state (`busy`, `idle`, `starting`, `stopping`, ...) for a worker's row."""

    text: str
    style: str = "summary"


@dataclasses.dataclass(frozen=True)
class Reading:
    """A `status` reply and the monotonic time it arrived, so that two give rates."""

    reply: Mapping[str, Any]
    at: float


def duration_text(seconds: float) -> str:
    """`0.85` -> "850ms", `35.2` -> "35.2s", `600` -> "10m", `9000` -> "2.5h"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def bytes_text(count: float) -> str:
    """Bytes in binary units: "512K", "23.4M", "1.2G"."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{count:.0f}B"


def request_text(request: Any) -> str:
    """The request in hand as one line: a string as it is, an object by its description
    (else its peer), nothing as ""."""
    if isinstance(request, Mapping):
        request = request.get("description") or request.get("peer") or ""
    return " ".join(str(request or "").split())


def _number(value: Any, shown: Callable[[float], str]) -> str:
    return shown(float(value)) if isinstance(value, int | float) else "-"


# The live record's columns: (reply key, header, cell); shown when any worker has the key.
OPTIONAL_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("request_elapsed", "ELAPSED", lambda value: _number(value, duration_text)),
    ("cpu_seconds", "CPU", lambda value: _number(value, lambda s: f"{s:.2f}s")),
    ("rss", "RSS", lambda value: _number(value, bytes_text)),
    ("pss", "PSS", lambda value: _number(value, bytes_text)),
)


def _identity(worker: Mapping[str, Any]) -> tuple[str, int, int]:
    return (str(worker.get("server", "")), int(worker["slot"]), int(worker["pid"]))


def _rates(current: Reading, previous: Reading | None) -> dict[tuple[str, int, int], float]:
    """Requests per second of each worker that was there (same pid) both times."""
    if previous is None or current.at <= previous.at:
        return {}
    before = {_identity(w): int(w["requests"]) for w in previous.reply.get("workers", ())}
    elapsed = current.at - previous.at
    rates = {}
    for worker in current.reply.get("workers", ()):
        key = _identity(worker)
        if key in before:
            rates[key] = max(0, int(worker["requests"]) - before[key]) / elapsed
    return rates


def busiest_first(
    workers: list[Mapping[str, Any]], rates: Mapping[tuple[str, int, int], float]
) -> list[Mapping[str, Any]]:
    """Busy workers first, then by the longest request in hand, the highest request rate,
    the most requests served; the slot breaks ties."""

    def key(worker: Mapping[str, Any]) -> tuple[bool, float, float, int, str, int]:
        elapsed = worker.get("request_elapsed")
        return (
            worker.get("state") != "busy",
            -float(elapsed) if isinstance(elapsed, int | float) else 0.0,
            -rates.get(_identity(worker), 0.0),
            -int(worker.get("requests", 0)),
            str(worker.get("server", "")),
            int(worker["slot"]),
        )

    return sorted(workers, key=key)


def frame(
    current: Reading, previous: Reading | None = None, clock: float | None = None
) -> list[Line]:
    """The whole view for one reply: header lines, a blank line, the table of workers.

    `previous`: the reply before, for rates (no rate column without it).  `clock`: the
    wall time shown in the title (now if None)."""
    reply = current.reply
    lines = _header(current, previous, time.time() if clock is None else clock)
    workers = list(reply.get("workers", ()))
    if not workers and not reply.get("desired"):
        lines.append(Line("no worker pool: the servers run in " + _modes(reply) + " mode"))
        return lines
    rates = _rates(current, previous)
    lines.append(Line(""))
    lines += _table(busiest_first(workers, rates), rates, with_rates=previous is not None)
    return lines


def _modes(reply: Mapping[str, Any]) -> str:
    modes = sorted({str(server.get("mode")) for server in reply.get("servers", ())})
    return "/".join(modes) or "an unknown"


def _header(current: Reading, previous: Reading | None, clock: float) -> list[Line]:
    reply = current.reply
    title = (
        f"sockherd top - supervisor pid {reply.get('pid')}: {reply.get('state')}, "
        f"up {duration_text(float(reply.get('uptime', 0.0)))}"
    )
    left = reply.get("drain_seconds_left")
    if isinstance(left, int | float):
        title += f", {left:.1f} s left to the graceful deadline"
    title += time.strftime("  %H:%M:%S", time.localtime(clock))
    lines = [Line(title, "title")]
    workers = reply.get("workers", ())
    if workers or reply.get("desired"):
        counts = {state: 0 for state in STATES}
        for worker in workers:
            counts[str(worker.get("state"))] = counts.get(str(worker.get("state")), 0) + 1
        by_state = ", ".join(f"{n} {state}" for state, n in counts.items())
        lines.append(
            Line(
                f"workers: {len(workers)} of {reply.get('desired')} wanted ({by_state}), "
                f"generation {reply.get('generation')}"
            )
        )
    total = int(reply.get("requests_total", 0))
    requests = f"requests: {total} served"
    if previous is not None and current.at > previous.at:
        done = total - int(previous.reply.get("requests_total", 0))
        requests += f", {max(0, done) / (current.at - previous.at):.1f}/s"
    requests += f", {reply.get('in_progress', 0)} in progress"
    restarts = ", ".join(
        f"{reason} {count}" for reason, count in sorted(reply.get("restarts", {}).items()) if count
    )
    lines.append(Line(f"{requests}; restarts: {restarts or 'none'}"))
    queues = [
        f"{server.get('server')} {queue[0]} of {queue[1]}"
        for server in reply.get("servers", ())
        if isinstance(queue := server.get("listen_queue"), list | tuple) and len(queue) == 2
    ]
    if queues:
        lines.append(Line("listen queue: " + ", ".join(queues)))
    upgrade = reply.get("upgrade")
    if isinstance(upgrade, Mapping) and upgrade:
        lines.append(Line(upgrade_text(upgrade)))
    return lines


def upgrade_text(upgrade: Mapping[str, Any]) -> str:
    """The last in-place upgrade: "upgrade 2: in progress", "last upgrade 2: ok in 1.4 s",
    "last upgrade 3: failed (the new code does not import)"."""
    number, outcome = upgrade.get("id"), upgrade.get("outcome")
    if outcome is None:
        return f"upgrade {number}: in progress"
    if outcome == "ok":
        seconds = upgrade.get("seconds")
        took = f" in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
        return f"last upgrade {number}: ok{took}"
    return f"last upgrade {number}: {outcome} ({upgrade.get('reason')})"


def _table(
    workers: list[Mapping[str, Any]],
    rates: Mapping[tuple[str, int, int], float],
    with_rates: bool,
) -> list[Line]:
    grouped = any("server" in worker for worker in workers)
    optional = [column for column in OPTIONAL_COLUMNS if any(column[0] in w for w in workers)]
    described = any("request" in worker for worker in workers)
    header = ["SERVER"] * grouped + ["SLOT", "PID", "STATE", "REQUESTS"]
    header += ["REQ/S"] * with_rates + [title for _, title, _ in optional] + ["AGE"]
    header += ["REQUEST"] * described
    rows = [header]
    for worker in workers:
        row = [str(worker.get("server", ""))] * grouped
        row += [str(worker["slot"]), str(worker["pid"]), str(worker.get("state"))]
        row.append(str(worker.get("requests", 0)))
        if with_rates:
            rate = rates.get(_identity(worker))
            row.append("-" if rate is None else f"{rate:.1f}")
        row += [cell(worker.get(key)) for key, _, cell in optional]
        row.append(duration_text(float(worker.get("age", 0.0))))
        if described:
            row.append(request_text(worker.get("request")))
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    texts = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines = [Line(texts[0], "header")]
    lines += [Line(text, str(w.get("state"))) for text, w in zip(texts[1:], workers, strict=True)]
    return lines


def plain(lines: list[Line]) -> str:
    """The view as plain text, for a pipe or a file."""
    return "\n".join(line.text for line in lines)
