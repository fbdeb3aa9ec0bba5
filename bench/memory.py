"""Memory benchmark: the total PSS of an 8-worker pool serving an application that builds
about 100 MB of Python objects per worker lazily (bench/memory_app.py).

    python bench/memory.py [--workers 8] [--requests 10000] [--out DIR]

For each server -- sockherd's prefork pool as it ships (gc.freeze() before each fork),
the same with --no-freeze-heap, the same reforking once (a worker that served 100
requests, its cache complete, becomes the template of the next 8), and gunicorn
--preload (sync workers) -- it starts the server on 127.0.0.1, sends `--requests` HTTP
requests from 8 client threads (new connection each, bounded in count and time),
checks that every worker built its whole cache, waits a second for the pool to
settle, then sums PSS, USS and RSS (/proc/PID/smaps_rollup) over the server's whole
process tree (supervisor or master included).  Servers run one after the other;
memory figures depend little on the load other processes put on the machine.
Writes DIR/memory.md (default bench/results/) and prints it.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from sockherd.workers.proc_stats import read_process  # noqa: E402

MIB = 2**20


@dataclass(frozen=True)
class Variant:
    name: str
    argv: list[str]  # {port} and {workers} are filled in


SOCKHERD = [sys.executable, "-m", "sockherd", "serve", "memory_app:CacheHandler", "--mode",
            "prefork", "--workers", "{workers}", "--bind", "127.0.0.1:{port}",
            "--log-level", "warning"]  # fmt: skip
VARIANTS = (
    Variant("sockherd (default: gc.freeze)", SOCKHERD),
    Variant("sockherd --no-freeze-heap", [*SOCKHERD, "--no-freeze-heap"]),
    Variant("sockherd --refork-after 100 (+ freeze)", [*SOCKHERD, "--refork-after", "100"]),
    Variant(
        "gunicorn --preload (sync)",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            "{workers}",
            "--worker-class",
            "sync",
            "--bind",
            "127.0.0.1:{port}",
            "--log-level",
            "warning",
            "memory_app:application",
        ],
    ),  # fmt: skip
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, timeout: float = 10.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").rpartition("\r\n\r\n")[2]


def wait_serving(process: subprocess.Popen, port: int, workers: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        children = psutil.Process(process.pid).children(recursive=True)
        if len(children) >= workers:
            try:
                get(port, timeout=2)
                return
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError("the server did not start in time")


def load(port: int, requests: int, clients: int, deadline: float) -> dict[int, int]:
    """Send `requests` requests from `clients` threads; {pid: chunks its cache has}."""
    chunks: dict[int, int] = {}
    served = collections.Counter[int]()
    lock = threading.Lock()
    remaining = [requests]

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            words = get(port).split()  # "pid N chunks C read R"
            pid, built = int(words[1]), int(words[3])
            with lock:
                chunks[pid] = max(chunks.get(pid, 0), built)
                served[pid] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if remaining[0] > 0:
        raise RuntimeError(f"{remaining[0]} requests not sent before the deadline")
    return chunks


def tree_memory(pid: int) -> dict[str, float]:
    """PSS, USS, RSS (MiB) summed over `pid` and its descendants, and how many processes."""
    pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    sums = {"pss": 0.0, "uss": 0.0, "rss": 0.0, "processes": float(len(pids))}
    for each in pids:
        figures = read_process(each)
        if figures is None or figures.pss is None:
            continue
        sums["pss"] += figures.pss / MIB
        sums["uss"] += (figures.uss or 0) / MIB
        sums["rss"] += figures.rss / MIB
    return sums


def run_variant(variant: Variant, workers: int, requests: int) -> dict[str, float]:
    port = free_port()
    argv = [part.format(port=port, workers=workers) for part in variant.argv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT]))
    process = subprocess.Popen(argv, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    try:
        wait_serving(process, port, workers, time.monotonic() + 60)
        chunks = load(port, requests, clients=8, deadline=time.monotonic() + 300)
        time.sleep(1.0)  # let the last requests finish and the pool settle
        figures = tree_memory(process.pid)
        figures["workers_seen"] = len(chunks)
        figures["complete_caches"] = sum(1 for built in chunks.values() if built >= 20)
        return figures
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def report(results: dict[str, dict[str, float]], workers: int, requests: int) -> str:
    baseline = results.get("gunicorn --preload (sync)", {}).get("pss")
    lines = [
        "# Memory benchmark (bench/memory.py)",
        "",
        f"{datetime.date.today()}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{workers} workers, {requests} requests (new connection each, 8 clients); the app "
        "builds ~35 MB of objects at import and ~95 MB of cache per worker over its first 20 "
        "requests. Totals over the server's whole process tree (supervisor/master included).",
        "",
        "| server | total PSS | vs gunicorn --preload | total USS | total RSS | processes "
        "| workers with full cache |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        ratio = f"{row['pss'] / baseline:.2f}×" if baseline else "–"
        lines.append(
            f"| {name} | {row['pss']:.0f} MiB | {ratio} | {row['uss']:.0f} MiB "
            f"| {row['rss']:.0f} MiB | {row['processes']:.0f} "
            f"| {row['complete_caches']:.0f} of {row['workers_seen']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    results = {}
    for variant in VARIANTS:
        print(f"memory: {variant.name} ...", file=sys.stderr, flush=True)
        results[variant.name] = run_variant(variant, args.workers, args.requests)
    text = report(results, args.workers, args.requests)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "memory.md"), "w", encoding="utf-8") as out:
        out.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
