"""Benchmark: sockherd's socketserver classes against CPython's, side by side in one run.

    python bench/run.py [--requests N] [--concurrency C]

For each mode (sync, threading, forking) and each module (socketserver, sockherd),
and for sockherd's prefork pool (4 workers, accept and dispatch hand-off), a
server runs in its own process; a single-threaded non-blocking client keeps C
connections in flight, each one connect / send a line / read the echo / close,
until N requests are done.  Also measured in-process: how long `shutdown()` takes
with the default poll_interval, and how long a finished forked child stays a
zombie on an idle server.  Prints one table and sockherd/CPython ratios.
All traffic goes to 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sockherd  # noqa: E402
from sockherd.examples.echo import EchoHandler  # noqa: E402

MODULES = {"socketserver": socketserver, "sockherd": sockherd}
MODES = ("sync", "threading", "forking")
PREFORK_MODES = ("prefork-accept", "prefork-dispatch")  # 4 workers; sockherd only
PAYLOAD = b"x" * 64 + b"\n"
TIME_LIMIT = 60.0  # seconds per measurement, whatever N is


def run_load(port: int, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Drive `requests` echo round trips, `concurrency` at a time; return (seconds, latencies)."""
    selector = selectors.DefaultSelector()
    latencies: list[float] = []
    started = 0

    def open_one() -> None:
        nonlocal started
        started += 1
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE, [time.perf_counter(), b""])

    begin = time.perf_counter()
    for _ in range(min(concurrency, requests)):
        open_one()
    while len(latencies) < requests:
        if time.perf_counter() - begin > TIME_LIMIT:
            raise RuntimeError(f"load did not finish within {TIME_LIMIT} s")
        for key, events in selector.select(1.0):
            sock, state = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                sock.sendall(PAYLOAD)
                sock.shutdown(socket.SHUT_WR)
                selector.modify(sock, selectors.EVENT_READ, state)
                continue
            chunk = sock.recv(4096)
            state[1] += chunk
            if chunk:
                continue
            if state[1] != PAYLOAD:
                raise RuntimeError(f"bad echo: {state[1]!r}")
            latencies.append(time.perf_counter() - state[0])
            selector.unregister(sock)
            sock.close()
            if started < requests:
                open_one()
    elapsed = time.perf_counter() - begin
    selector.close()
    return elapsed, latencies


def measure_throughput(module: str, mode: str, requests: int, concurrency: int) -> dict:
    server = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "serve_one.py"), module, mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        run_load(port, min(200, requests), concurrency)  # warm-up
        elapsed, latencies = run_load(port, requests, concurrency)
    finally:
        server.terminate()
        server.wait(10)
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
    }


def measure_shutdown(module: str, trials: int = 10) -> float:
    """Median seconds `shutdown()` takes with the default poll_interval (0.5 s)."""
    timings = []
    for _ in range(trials):
        server = MODULES[module].TCPServer(("127.0.0.1", 0), EchoHandler)
        loop = threading.Thread(target=server.serve_forever)
        loop.start()
        time.sleep(0.05)  # let the loop reach select(): the worst case is measured from inside it
        began = time.perf_counter()
        server.shutdown()
        timings.append(time.perf_counter() - began)
        loop.join()
        server.server_close()
    return statistics.median(timings)


def measure_zombie_lifetime(module: str, trials: int = 5) -> float:
    """Median seconds from a forked child's exit until its server reaps it (idle server)."""
    lifetimes = []
    for _ in range(trials):
        server = MODULES[module].ForkingTCPServer(("127.0.0.1", 0), EchoHandler)
        loop = threading.Thread(target=server.serve_forever)
        loop.start()
        with socket.create_connection(server.server_address) as client:
            client.sendall(PAYLOAD)
            client.shutdown(socket.SHUT_WR)
            while client.recv(4096):
                pass
        (pid,) = server.active_children
        exited = reaped = None
        deadline = time.perf_counter() + 5
        while reaped is None and time.perf_counter() < deadline:
            if exited is None and _is_zombie_or_gone(pid):
                exited = time.perf_counter()
            if not server.active_children:
                reaped = time.perf_counter()
        server.shutdown()
        loop.join()
        server.server_close()
        lifetimes.append((reaped or time.perf_counter()) - (exited or reaped or 0))
    return statistics.median(lifetimes)


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(
        f"# {args.requests} echo requests, {args.concurrency} in flight, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(f"{'mode':17} {'module':13} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    results = {}
    for mode in MODES:
        for module in MODULES:
            figures = measure_throughput(module, mode, args.requests, args.concurrency)
            results[mode, module] = figures
            print(
                f"{mode:17} {module:13} {figures['rps']:9.0f} "
                f"{figures['p50_ms']:8.2f} {figures['p99_ms']:8.2f}"
            )
    for mode in PREFORK_MODES:
        figures = measure_throughput("sockherd", mode, args.requests, args.concurrency)
        results[mode, "sockherd"] = figures
        print(
            f"{mode:17} {'sockherd':13} {figures['rps']:9.0f} "
            f"{figures['p50_ms']:8.2f} {figures['p99_ms']:8.2f}"
        )
    print("\n# ratios sockherd / CPython")
    for mode in MODES:
        ours, theirs = results[mode, "sockherd"], results[mode, "socketserver"]
        print(
            f"{mode:17} req/s x{ours['rps'] / theirs['rps']:.2f}  "
            f"p99 x{ours['p99_ms'] / theirs['p99_ms']:.2f}"
        )
    for mode in PREFORK_MODES:
        ours = results[mode, "sockherd"]
        for baseline in ("forking", "threading"):
            theirs = results[baseline, "socketserver"]
            print(
                f"{mode} vs CPython {baseline}: req/s x{ours['rps'] / theirs['rps']:.2f}  "
                f"p99 x{ours['p99_ms'] / theirs['p99_ms']:.2f}"
            )
    print("\n# loop latencies (median)")
    for module in MODULES:
        shutdown = measure_shutdown(module)
        zombie = (
            measure_zombie_lifetime(module) if sys.platform.startswith("linux") else float("nan")
        )
        print(
            f"{module:13} shutdown() {1000 * shutdown:7.2f} ms   "
            f"zombie lifetime {1000 * zombie:7.2f} ms"
        )


if __name__ == "__main__":
    main()
