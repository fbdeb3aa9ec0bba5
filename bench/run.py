"""Benchmark: sockherd against CPython's socketserver, a hand-written prefork and gunicorn.

    python bench/run.py [--quick] [--threads-only] [--only PATTERNS] [--rounds R]
                        [--duration S] [--workers N] [--out DIR]

Compiles the C load generator and a C epoll server (the yardstick that shows
the load generator is not the bottleneck), then measures every cell of the
matrix R times, interleaved: round after round, every server once per round,
neighbours in time for the cells that are compared.  Each server runs pinned
to CPU 1 (its whole process tree), the load generator to CPU 0.

Writes DIR/latest.csv (one row per measurement) and DIR/latest.md (medians,
ratios, the issue's targets), and prints the Markdown.  Defaults: the full
matrix, 3 rounds of 1 s per cell, into bench/results/ (about 13 minutes on 2
cores); --quick: the cells the targets need, 2 rounds of 1 s, into bench/build/
(under 3 minutes); --threads-only: the prefork × threads keep-alive cells alone
(into bench/build/ unless --out); --only: of the chosen matrix, only the cells whose
"protocol:server" matches one of the comma-separated shell patterns (e.g.
`--quick --only 'echo:handmade*,echo:sockherd-*accept'`, into bench/build/ unless
--out), for short A/B runs.  Only 127.0.0.1 is ever a target; every run is bounded in
time and count.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import os
import platform
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import report  # noqa: E402
import servers  # noqa: E402
import targets  # noqa: E402
from build import BUILD_DIR, build  # noqa: E402
from measure import Cell, MeasurementFailed, Settings, measure  # noqa: E402

CONCURRENCIES = (1, 16, 64)
CONNECTIONS = ("new", "keepalive")
ECHO_BASELINES = ("cpython-forking", "cpython-threading", "handmade-prefork")
HTTP_BASELINES = ("gunicorn-sync", "cpython-threading-http")


def full_matrix(with_wrk: bool) -> list[Cell]:
    """Every server x concurrency x connection mode, metrics on for sockherd at c16, wrk."""
    cells = []
    for protocol, names in (("echo", servers.ECHO_SERVERS), ("http", servers.HTTP_SERVERS)):
        for concurrency in CONCURRENCIES:
            for connection in CONNECTIONS:
                for name in names:
                    if name in servers.SERVE_SERVERS and (concurrency, connection) != (16, "new"):
                        continue  # `sockherd serve`: the targets' cell only
                    cells.append(Cell(protocol, name, concurrency, connection))
                    if (
                        concurrency == 16
                        and connection == "new"
                        and name in servers.METRICS_CAPABLE
                    ):
                        cells.append(Cell(protocol, name, concurrency, connection, metrics=True))
    if with_wrk:
        cells += [Cell("http", name, 16, "new", loadgen="wrk") for name in servers.HTTP_SERVERS]
    return cells + [cell for cell in threads_cells() if cell not in cells]


def quick_matrix() -> list[Cell]:
    """Only what the targets need: c16 new connections, forking at c64, metrics on/off."""
    cells = [Cell("echo", name, 16, "new") for name in servers.ECHO_SERVERS]
    for name in ("sockherd-prefork-accept", "sockherd-prefork-dispatch", "sockherd-forking"):
        cells.append(Cell("echo", name, 16, "new", metrics=True))
    cells += [Cell("echo", name, 64, "new") for name in ("cpython-forking", "sockherd-forking")]
    cells += [Cell("http", name, 16, "new") for name in servers.HTTP_SERVERS]
    cells += [cell for cell in threads_cells() if cell.server not in servers.THREADS_ONLY_SERVERS]
    return cells


def threads_cells() -> list[Cell]:
    """Keep-alive at c64: prefork x threads against CPython's threading server and the sync
    prefork pool (threads=1), echo and HTTP (the prefork x threads targets)."""
    return [
        Cell(protocol, name, 64, "keepalive")
        for protocol, names in targets.THREADS_CELLS.items()
        for name in names
    ]


def machine() -> str:
    """CPU model, CPU count, kernel and Python, in one line."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def run(cells: list[Cell], rounds: int, settings: Settings) -> list[dict]:
    """Measure every cell once per round; alternate the order each round to cancel drift.

    A measurement that fails is reported on stderr and left out (its cell's median
    comes from the other rounds); more than a tenth failing aborts the run."""
    rows = []
    total = len(cells) * rounds
    failures = 0
    began = time.monotonic()
    for round_ in range(rounds):
        ordered = cells if round_ % 2 == 0 else list(reversed(cells))
        for index, cell in enumerate(ordered):
            done = round_ * len(cells) + index + 1
            try:
                figures = measure(cell, settings)
            except MeasurementFailed as error:
                failures += 1
                print(f"[{done}/{total}] FAILED {error}", file=sys.stderr, flush=True)
                if failures > total / 10:
                    raise SystemExit("bench: too many failed measurements") from error
                continue
            rows.append(report.flatten(round_, cell, figures))
            print(
                f"[{done}/{total} {time.monotonic() - began:5.0f}s] round {round_} "
                f"{cell.protocol} {cell.server} c{cell.concurrency} {cell.connection}"
                f"{' metrics' if cell.metrics else ''}{' wrk' if cell.loadgen == 'wrk' else ''}: "
                f"{figures['rps']:.0f} req/s, p99 {figures['p99_us'] / 1000:.2f} ms, "
                f"max {figures['max_us'] / 1000:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
    return rows


def render(rows: list[dict], args: argparse.Namespace, settings: Settings, wall: float) -> str:
    """The whole Markdown report."""
    pinning = (
        f"servers pinned to CPU {settings.server_cpu}, load generator to CPU {settings.loadgen_cpu}"
        if settings.server_cpu is not None
        else "no pinning (fewer than 2 CPUs)"
    )
    lines = [
        f"# sockherd benchmark{' (--quick)' if args.quick else ''}",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine()}",
        f"- method: {args.rounds} interleaved rounds of {settings.duration} s per cell "
        f"(after {settings.warmup} s warm-up), medians shown; {pinning}; "
        f"{settings.workers} workers for every pool (prefork, hand-made, gunicorn); "
        f"keep-alive = {settings.per_conn} requests per connection; wall time {wall:.0f} s",
        f"- {targets.loadgen_headroom(rows)}",
        "- ratios are medians over rounds of the ratio within one round",
        "",
        "## Targets (c16, new connection per request unless stated)",
        "",
        f"(sockherd-prefork-threads: {settings.workers} workers × {servers.THREADS} threads)",
        "",
    ]
    lines += targets.markdown(targets.check(rows))
    lines += ["## Metrics on vs off", ""] + report.metrics_table(rows)
    lines += ["## Echo (line protocol, sockherd's EchoHandler)", ""]
    lines += report.table(rows, "echo", "loadgen", ECHO_BASELINES)
    lines += ["## HTTP (http.server's handler; gunicorn runs the same answer as WSGI)", ""]
    lines += report.table(rows, "http", "loadgen", HTTP_BASELINES)
    lines += report.table(rows, "http", "wrk", HTTP_BASELINES)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the targets' cells, briefly")
    parser.add_argument(
        "--threads-only", action="store_true", help="only the prefork × threads keep-alive cells"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated patterns of protocol:server to keep"
    )
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per cell")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", default=None, help="directory for latest.csv and latest.md")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    duration = args.duration or 1.0
    scratch = args.quick or args.threads_only or args.only
    out = args.out or (BUILD_DIR if scratch else os.path.join(HERE, "results"))
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    settings = Settings(
        build_dir=build(),
        workers=args.workers,
        duration=duration,
        warmup=0.2 if args.quick else 0.3,
        server_cpu=1 if two_cpus else None,
        loadgen_cpu=0 if two_cpus else None,
    )
    if two_cpus:
        os.sched_setaffinity(0, {0})  # the runner itself stays off the servers' CPU
    with_wrk = shutil.which("wrk") is not None
    cells = quick_matrix() if args.quick else full_matrix(with_wrk)
    if args.threads_only:
        cells = threads_cells()
    if args.only:
        patterns = args.only.split(",")
        cells = [
            cell
            for cell in cells
            if any(fnmatch.fnmatchcase(f"{cell.protocol}:{cell.server}", p) for p in patterns)
        ]
    began = time.monotonic()
    rows = run(cells, args.rounds, settings)
    wall = time.monotonic() - began
    os.makedirs(out, exist_ok=True)
    report.write_csv(os.path.join(out, "latest.csv"), rows)
    text = render(rows, args, settings, wall)
    with open(os.path.join(out, "latest.md"), "w") as md:
        md.write(text + "\n")
    print(text)
    if not with_wrk and not args.quick:
        print("(wrk not installed: the wrk cross-check was skipped)", file=sys.stderr)


if __name__ == "__main__":
    main()
