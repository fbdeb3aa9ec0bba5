"""Benchmark: what sockherd's Prometheus metrics cost.

    python bench/metrics_cost.py [--requests N] [--rounds R]

1. Requests/s with the /metrics endpoint off and on (scraped every second during the
   load), for the forking and prefork (accept) modes, alternating off/on for R rounds
   and reporting the median ratio.
2. Scrape time after 10,000 fork-per-request children: a ForkingTCPServer with
   metrics serves 10,000 requests, then /metrics is fetched 20 times; once with
   the echo handler, once with a handler that counts with prometheus_client's
   multiprocess mode (whose per-pid files sockherd folds at each reap).
All traffic is on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import run_load  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape_ms(port: int) -> float:
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        response.read()
    return 1000 * (time.perf_counter() - began)


def throughput(mode: str, requests: int, metrics: bool) -> float:
    port = free_port() if metrics else None
    args = [sys.executable, os.path.join(HERE, "serve_one.py"), "sockherd", mode]
    server = subprocess.Popen(
        args + ([str(port)] if port else []), stdout=subprocess.PIPE, text=True
    )
    stop = threading.Event()
    try:
        listen_port = int(server.stdout.readline())
        run_load(listen_port, 200, 4)
        scraper = None
        if port:

            def scrape_every_second() -> None:
                while not stop.wait(1.0):
                    scrape_ms(port)

            scraper = threading.Thread(target=scrape_every_second)
            scraper.start()
        elapsed, _ = run_load(listen_port, requests, 4)
        stop.set()
        if scraper:
            scraper.join()
    finally:
        server.terminate()
        server.wait(10)
    return requests / elapsed


def scrape_after_children(children: int, mode: str = "forking") -> tuple[float, float]:
    port = free_port()
    args = [sys.executable, os.path.join(HERE, "serve_one.py"), "sockherd", mode, str(port)]
    with tempfile.TemporaryDirectory() as directory:
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=directory)
        if mode == "forking":
            env.pop("PROMETHEUS_MULTIPROC_DIR")
        server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        try:
            listen_port = int(server.stdout.readline())
            run_load(listen_port, children, 4)
            timings = [scrape_ms(port) for _ in range(20)]
        finally:
            server.terminate()
            server.wait(10)
    return statistics.median(timings), max(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"# metrics off vs on, {args.requests} requests x {args.rounds} rounds, 4 in flight")
    for mode in ("forking", "prefork-accept"):
        ratios = []
        for _ in range(args.rounds):
            off = throughput(mode, args.requests, metrics=False)
            on = throughput(mode, args.requests, metrics=True)
            ratios.append(on / off)
            print(f"{mode:15} off {off:8.0f} req/s   on {on:8.0f} req/s   on/off x{on / off:.3f}")
        print(f"{mode:15} median on/off x{statistics.median(ratios):.3f}")
    print()
    for mode in ("forking", "forking-user-metrics"):
        median, worst = scrape_after_children(10_000, mode)
        print(
            f"# scrape after 10,000 forked children ({mode}): "
            f"median {median:.2f} ms, max {worst:.2f} ms"
        )


if __name__ == "__main__":
    main()
