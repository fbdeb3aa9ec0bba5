"""Serve the echo handler with one module's class for the benchmark.

    python bench/serve_one.py MODULE MODE [METRICS_PORT]

MODULE is socketserver or sockherd; MODE is sync, threading, forking, or (sockherd
only) prefork-accept or prefork-dispatch with 4 workers, or forking-user-metrics (a
handler counting with prometheus_client's multiprocess mode).

Prints the port on stdout once listening; SIGTERM ends it (the default action).
"""

from __future__ import annotations

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sockherd.examples.echo import EchoHandler  # noqa: E402

CLASS_NAMES = {
    "sync": "TCPServer",
    "threading": "ThreadingTCPServer",
    "forking": "ForkingTCPServer",
}
PREFORK_WORKERS = 4


def main(module_name: str, mode: str, metrics_port: int | None = None) -> None:
    module = importlib.import_module(module_name)
    handler = EchoHandler
    if mode == "forking-user-metrics":  # the handler counts with prometheus_client itself
        handler, mode = _counting_handler(), "forking"
    if mode.startswith("prefork-"):
        server = module.PreforkTCPServer(
            ("127.0.0.1", 0), EchoHandler, workers=PREFORK_WORKERS, handoff=mode.split("-")[1]
        )
    else:
        server = getattr(module, CLASS_NAMES[mode])(("127.0.0.1", 0), handler)
    if metrics_port is not None:
        server.metrics_address = ("127.0.0.1", metrics_port)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _counting_handler() -> type:
    import prometheus_client  # multiprocess mode: PROMETHEUS_MULTIPROC_DIR is set

    handled = prometheus_client.Counter("bench_handled", "Requests the handler saw")

    class Counting(EchoHandler):
        def handle(self) -> None:
            handled.inc()
            super().handle()

    return Counting


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
