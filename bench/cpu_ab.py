"""A/B of servers by CPU time and context switches per request, robust on a shared machine.

    python bench/cpu_ab.py [--rounds R] [--duration S] [--concurrency C] [--mode echo|http]
                           [--per-conn N] [--workers N] [--server-cpus LIST]
                           SERVER[@VAR=VALUE,...] ...

Throughput on a machine shared with other work swings by 2× from one second to the
next; the CPU time a server spends per request barely does.  Each SERVER (a name from
`servers.py`) runs in its own cpuacct cgroup (cgroup v1, root), pinned to CPU 1 (or
--server-cpus, e.g. 0,1: a multi-process server may then use both), while the
load generator drives it from CPU 0 (c16, a new connection per request unless --per-conn)
for S seconds.
Per request it reports the server tree's CPU time (cpuacct.usage), its context switches
(voluntary and involuntary, summed over the tree's /proc/PID/status), the minor page
faults of its top process (a forking server's parent: copy-on-write after each fork) and of
its reaped children (a forking server's request children), and the load
generator's req/s, p50, p99 and p99.9.  Rounds interleave the servers, alternating their
order; medians and the spread (min–max) are printed.  `@VAR=VALUE,…` after a name
runs that server with those environment variables (A/B of an environment setting;
`SOCKHERD_BENCH_TREE=DIR` runs the sockherd package found in DIR: A/B of two
versions).  Only 127.0.0.1 is a target; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import servers  # noqa: E402
from build import build  # noqa: E402
from measure import _kill_group, _probe, _read_port, free_port  # noqa: E402

CGROUP = "/sys/fs/cgroup/cpuacct/sockherd-bench"


def _switches(pids: list[str]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


def one(spec: str, args: argparse.Namespace, build_dir: str) -> dict:
    """Run server `spec` once under load; return its figures."""
    name, _, assignments = spec.partition("@")
    env = dict(os.environ)
    env.update(item.split("=", 1) for item in assignments.split(",") if item)
    if env.get("SOCKHERD_BENCH_TREE"):  # `sockherd serve` too runs that tree's package
        env["PYTHONPATH"] = env["SOCKHERD_BENCH_TREE"]
    os.makedirs(CGROUP, exist_ok=True)
    port = free_port() if name in servers.SERVE_SERVERS or name == "gunicorn-sync" else 0
    keepalive = args.per_conn > 1  # HTTP: the handler speaking HTTP/1.1
    argv = servers.command(name, sys.executable, build_dir, args.workers, port, keepalive=keepalive)
    server = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=HERE,  # not a source tree: `python -m sockherd` must find SOCKHERD_BENCH_TREE's
        start_new_session=True,
        preexec_fn=lambda: (
            _write(f"{CGROUP}/cgroup.procs", str(os.getpid())),
            os.sched_setaffinity(0, args.server_cpus),
        ),
    )
    try:
        port = port or _read_port(server)
        _probe(port, args.mode)
        time.sleep(0.3)
        pids = _read(f"{CGROUP}/cgroup.procs").split()
        cpu0, switches0 = int(_read(f"{CGROUP}/cpuacct.usage")), _switches(pids)
        faults0, child_faults0 = _minor_faults(server.pid)
        result = subprocess.run(
            [os.path.join(build_dir, "loadgen"), "--port", str(port), "--mode", args.mode]
            + ["--concurrency", str(args.concurrency), "--duration", str(args.duration)]
            + ["--warmup", "0", "--per-conn", str(args.per_conn), "--timeout", "10"],
            capture_output=True,
            text=True,
            timeout=args.duration + 30,
            preexec_fn=lambda: os.sched_setaffinity(0, {0}),
        )
        cpu1 = int(_read(f"{CGROUP}/cpuacct.usage"))
        switches1 = _switches(pids)  # the same processes (a pool's workers live on)
        faults1, child_faults1 = _minor_faults(server.pid)
        figures = json.loads(result.stdout)
    finally:
        _kill_group(server)
    requests = max(figures["requests"], 1)
    return {
        "rps": figures["rps"],
        "p50_ms": figures["p50_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000,
        "p999_ms": figures["p999_us"] / 1000,
        "cpu_us": (cpu1 - cpu0) / 1000 / requests,
        "switches": (switches1 - switches0) / requests,
        "faults": (faults1 - faults0) / requests,
        "child_faults": (child_faults1 - child_faults0) / requests,
    }


def _minor_faults(pid: int) -> tuple[int, int]:
    """Minor page faults of process `pid` and of its reaped children (/proc/PID/stat
    fields 10 and 11: copy-on-write among them)."""
    fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[8])


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("servers", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mode", default="echo", choices=("echo", "http"))
    parser.add_argument(
        "--per-conn", type=int, default=1, help="requests per connection (keep-alive: > 1)"
    )
    parser.add_argument("--workers", type=int, default=4, help="workers of every pool")
    parser.add_argument(
        "--server-cpus",
        type=lambda text: {int(cpu) for cpu in text.split(",")},
        default={1},
        help="CPUs the server may use, e.g. 0,1 (default 1; the load generator keeps CPU 0)",
    )
    args = parser.parse_args()
    build_dir = build()
    os.sched_setaffinity(0, {0})
    results: dict[str, list[dict]] = {name: [] for name in args.servers}
    for round_ in range(args.rounds):
        order = args.servers if round_ % 2 == 0 else list(reversed(args.servers))
        for name in order:
            results[name].append(one(name, args, build_dir))
    print(f"{args.rounds} rounds of {args.duration} s, c{args.concurrency}, {args.mode}")
    print(
        f"{'server':40} {'cpu µs/req':>16} {'switches/req':>14} {'top faults/req':>16} "
        f"{'child faults/req':>18} {'req/s':>8} p50 ms  p99 ms  p99.9 ms"
    )
    for name, rows in results.items():

        def cell(key: str, digits: int, rows: list[dict] = rows) -> str:
            values = [row[key] for row in rows]
            return (
                f"{statistics.median(values):.{digits}f} "
                f"({min(values):.{digits}f}–{max(values):.{digits}f})"
            )

        print(
            f"{name:40} {cell('cpu_us', 1):>16} {cell('switches', 2):>14} "
            f"{cell('faults', 1):>16} {cell('child_faults', 0):>18} "
            f"{statistics.median(r['rps'] for r in rows):>8.0f} "
            f"{statistics.median(r['p50_ms'] for r in rows):7.2f} "
            f"{statistics.median(r['p99_ms'] for r in rows):7.2f} "
            f"{statistics.median(r['p999_ms'] for r in rows):8.2f}"
        )
    try:
        os.rmdir(CGROUP)
    except OSError:
        pass


if __name__ == "__main__":
    main()
