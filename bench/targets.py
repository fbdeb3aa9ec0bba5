"""The issue's performance targets, checked against one run's rows.

Each check names the target, the value measured (a median over rounds of
per-round ratios, or a median latency) and whether it is met.  A check whose
cells were not measured (say --quick left them out) is reported as skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from report import medians, paired_ratio


@dataclass(frozen=True)
class Outcome:
    """One target: what it asks, what was measured, whether it holds (None: not measured)."""

    target: str
    measured: str
    met: bool | None


def _key(
    protocol: str,
    server: str,
    concurrency: int = 16,
    metrics: bool = False,
    connection: str = "new",
) -> tuple:
    return (protocol, server, concurrency, connection, metrics, "loadgen")


# Prefork x threads: keep-alive at c64, ours first, then CPython's threading server (the
# throughput baseline), then the sync prefork pool (threads=1, the reference).
# The 16-thread pool (as many threads in all as clients) shows what the 8-thread one waits for.
THREADS_CELLS = {
    "echo": (
        "sockherd-prefork-threads",
        "cpython-threading",
        "sockherd-prefork-accept",
        "sockherd-prefork-threads16",
    ),
    "http": (
        "sockherd-prefork-threads-http",
        "cpython-threading-http",
        "sockherd-prefork-accept-http",
        "sockherd-prefork-threads16-http",
    ),
}
THREADS_P999_MS = 20.0


def check(rows: list[dict]) -> list[Outcome]:
    """Every target of the issue, in the issue's order."""
    summary = medians(rows)
    outcomes: list[Outcome] = []

    def ratio_target(text: str, key: tuple, base: tuple, minimum: float) -> None:
        if key not in summary or base not in summary:
            outcomes.append(Outcome(text, "not measured", None))
            return
        ratio = paired_ratio(rows, key, base)
        outcomes.append(Outcome(text, f"{ratio:.2f}×", ratio >= minimum))

    for handoff in ("accept", "dispatch"):
        ours = _key("echo", f"sockherd-prefork-{handoff}")
        for base, minimum in (
            ("cpython-forking", 25),
            ("cpython-threading", 3),
            ("handmade-prefork", 0.97),
        ):
            ratio_target(
                f"echo prefork-{handoff} ≥ {minimum}× {base} (c16, new conn)",
                ours,
                _key("echo", base),
                minimum,
            )
    _dispatch_targets(outcomes, rows, summary)
    _serve_targets(outcomes, rows, summary)
    gunicorn = _key("http", "gunicorn-sync")
    for handoff in ("accept", "dispatch"):
        ours = _key("http", f"sockherd-prefork-{handoff}-http")
        ratio_target(f"HTTP prefork-{handoff} ≥ 1.3× gunicorn sync (c16)", ours, gunicorn, 1.3)
        if ours in summary and gunicorn in summary:
            mine, theirs = summary[ours]["p99_us"], summary[gunicorn]["p99_us"]
            outcomes.append(
                Outcome(
                    f"HTTP prefork-{handoff} p99 ≤ gunicorn sync p99 (c16)",
                    f"{mine / 1000:.2f} ms vs {theirs / 1000:.2f} ms",
                    mine <= theirs,
                )
            )
    ratio_target(
        "echo sockherd forking ≥ 1.0× CPython ForkingTCPServer (c16)",
        _key("echo", "sockherd-forking"),
        _key("echo", "cpython-forking"),
        1.0,
    )
    for server, limit in (("sockherd-forking", 300.0), ("cpython-forking", None)):
        key = _key("echo", server, 64)
        if key not in summary:
            outcomes.append(Outcome(f"echo {server} max latency at c64", "not measured", None))
            continue
        figures = summary[key]
        measured = f"max {figures['max_us'] / 1000:.0f} ms, p99 {figures['p99_us'] / 1000:.0f} ms"
        if limit is None:
            outcomes.append(Outcome(f"echo {server} at c64 (reference)", measured, None))
        else:
            met = figures["max_us"] < limit * 1000
            outcomes.append(Outcome(f"echo {server} max < {limit:.0f} ms (c64)", measured, met))
    for protocol, (threads, threading, sync, threads16) in THREADS_CELLS.items():
        _threads_targets(outcomes, rows, summary, protocol, threads, threading, sync)
        wide = _key(protocol, threads16, 64, connection="keepalive")
        if wide in summary:
            figures = summary[wide]
            outcomes.append(
                Outcome(
                    f"{protocol} keep-alive c64 with 16 threads per worker (reference)",
                    f"p99.9 {figures['p999_us'] / 1000:.1f} ms, {figures['rps']:.0f} req/s",
                    None,
                )
            )
    for key in summary:
        if key[4]:
            ratio_target(
                f"{key[0]} {key[1]} metrics on ≥ 0.97× off (c{key[2]})",
                key,
                key[:4] + (False,) + key[5:],
                0.97,
            )
    return outcomes


def _dispatch_targets(outcomes: list[Outcome], rows: list[dict], summary: dict) -> None:
    """Dispatch ≥ 0.7× accept (c16, new conn), next to the same ratio for the hand-made pair
    (`handmade-dispatch`: the hand-off protocol and nothing else, the Python floor of a
    hand-off) and sockherd's dispatch against that floor."""
    pairs = (
        ("sockherd-prefork-dispatch", "sockherd-prefork-accept", 0.7),
        ("handmade-dispatch", "handmade-prefork", None),
        ("sockherd-prefork-dispatch", "handmade-dispatch", None),
    )
    for ours, base, minimum in pairs:
        text = f"echo {ours} / {base} (c16, new conn)"
        key, base_key = _key("echo", ours), _key("echo", base)
        if key not in summary or base_key not in summary:
            outcomes.append(Outcome(text, "not measured", None))
            continue
        ratio = paired_ratio(rows, key, base_key)
        if minimum is None:
            outcomes.append(Outcome(f"{text} (reference)", f"{ratio:.2f}×", None))
        else:
            outcomes.append(Outcome(f"{text} ≥ {minimum}×", f"{ratio:.2f}×", ratio >= minimum))


def _serve_targets(outcomes: list[Outcome], rows: list[dict], summary: dict) -> None:
    """Served through `sockherd serve`: echo prefork-accept ≥ 0.97× the hand-made prefork
    with a p50 ≤ 1.2× its p50; HTTP prefork-accept p99 ≤ gunicorn sync's p99."""
    ours, handmade = _key("echo", "sockherd-serve-prefork-accept"), _key("echo", "handmade-prefork")
    text = "echo `sockherd serve` prefork-accept ≥ 0.97× handmade-prefork, p50 ≤ 1.2× (c16)"
    if ours in summary and handmade in summary:
        ratio = paired_ratio(rows, ours, handmade)
        p50 = paired_ratio(rows, ours, handmade, "p50_us")
        outcomes.append(
            Outcome(
                text,
                f"{ratio:.2f}×, p50 {p50:.2f}× ({summary[ours]['p50_us'] / 1000:.2f} ms vs "
                f"{summary[handmade]['p50_us'] / 1000:.2f} ms)",
                ratio >= 0.97 and p50 <= 1.2,
            )
        )
    else:
        outcomes.append(Outcome(text, "not measured", None))
    ours, gunicorn = (
        _key("http", "sockherd-serve-prefork-accept-http"),
        _key("http", "gunicorn-sync"),
    )
    text = "HTTP `sockherd serve` prefork-accept p99 ≤ gunicorn sync p99 (c16)"
    if ours in summary and gunicorn in summary:
        mine, theirs = summary[ours]["p99_us"], summary[gunicorn]["p99_us"]
        outcomes.append(
            Outcome(text, f"{mine / 1000:.2f} ms vs {theirs / 1000:.2f} ms", mine <= theirs)
        )
    else:
        outcomes.append(Outcome(text, "not measured", None))


def loadgen_headroom(rows: list[dict]) -> str:
    """How far the C yardstick server outruns the fastest Python server (c16, new conn)."""
    summary = medians(rows)
    lines = []
    for protocol in ("echo", "http"):
        ceiling = summary.get(_key(protocol, "c-epoll"))
        python = [
            (figures["rps"], key[1])
            for key, figures in summary.items()
            if key[0] == protocol
            and key[1] != "c-epoll"
            and key[2:] == (16, "new", False, "loadgen")
        ]
        if ceiling is None or not python:
            continue
        best, name = max(python)
        headroom = ceiling["rps"] / best if best else math.inf
        lines.append(
            f"{protocol}: the load generator drives the C epoll server at {ceiling['rps']:.0f} "
            f"req/s, {headroom:.1f}× the fastest Python server ({name}, {best:.0f} req/s)"
        )
    return "; ".join(lines)


def markdown(outcomes: list[Outcome]) -> list[str]:
    """The targets as a Markdown table."""
    lines = ["| target | measured | |", "|---|---|---|"]
    for outcome in outcomes:
        verdict = {True: "PASS", False: "MISS", None: "–"}[outcome.met]
        lines.append(f"| {outcome.target} | {outcome.measured} | {verdict} |")
    return lines + [""]


def _threads_targets(
    outcomes: list[Outcome],
    rows: list[dict],
    summary: dict,
    protocol: str,
    threads: str,
    threading: str,
    sync: str,
) -> None:
    """Prefork x threads at c64 keep-alive: p99.9 ≤ 20 ms and throughput ≥ 1× CPython's
    threading server; the sync prefork pool's figures and ratio alongside, for reference."""
    ours, base, reference = (
        _key(protocol, s, 64, connection="keepalive") for s in (threads, threading, sync)
    )
    label = f"{protocol} keep-alive c64 prefork×threads"
    if ours not in summary:
        outcomes.append(Outcome(f"{label} p99.9 ≤ {THREADS_P999_MS:.0f} ms", "not measured", None))
        return
    figures = summary[ours]
    p999 = figures["p999_us"] / 1000
    outcomes.append(
        Outcome(
            f"{label} p99.9 ≤ {THREADS_P999_MS:.0f} ms",
            f"{p999:.1f} ms (p99 {figures['p99_us'] / 1000:.1f} ms, {figures['rps']:.0f} req/s)",
            p999 <= THREADS_P999_MS,
        )
    )
    if base in summary:
        ratio = paired_ratio(rows, ours, base)
        theirs = summary[base]["p999_us"] / 1000
        outcomes.append(
            Outcome(
                f"{label} ≥ 1× {threading} (req/s)",
                f"{ratio:.2f}× (their p99.9 {theirs:.1f} ms)",
                ratio >= 1.0,
            )
        )
    else:
        outcomes.append(Outcome(f"{label} ≥ 1× {threading} (req/s)", "not measured", None))
    if reference in summary:
        ratio = paired_ratio(rows, ours, reference)
        theirs = summary[reference]["p999_us"] / 1000
        outcomes.append(
            Outcome(
                f"{label} vs sync prefork {sync} (reference)",
                f"{ratio:.2f}× req/s; sync p99.9 {theirs:.1f} ms",
                None,
            )
        )
