"""Profile the hot path of sockherd's prefork and forking modes under load (cProfile).

    python bench/profile_hotpath.py [--seconds S] [--top N] [--out DIR]

For each of prefork-accept, prefork-dispatch, sockherd forking and CPython's
forking (the reference), a server runs in a child process with cProfile
enabled in the serving process (the supervisor or the forking parent) and, for
prefork, in every worker (`Worker.run` is wrapped in the profiled process only;
sockherd's files are not touched).  The load generator drives it for S seconds
(c16, a new connection per request), then the server is stopped gracefully so
each profile is written.  Prints, per process role, the requests served, the
profiled CPU time and the function calls per request and the top N functions by own
time.  SOCKHERD_BENCH_TREE=DIR profiles the sockherd package found in DIR instead.  Profiles
land in DIR (default bench/build/profiles) for `python -m pstats`.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import io
import json
import os
import pstats
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.environ.get("SOCKHERD_BENCH_TREE") or os.path.dirname(HERE))

MODES = ("prefork-accept", "prefork-dispatch", "sockherd-forking", "cpython-forking")


def serve_profiled(mode: str, out_dir: str) -> None:
    """In the child: build the server, profile it and its workers, serve until SIGTERM."""
    from sockherd.examples.echo import EchoHandler

    address = ("127.0.0.1", 0)
    if mode.startswith("prefork-"):
        import sockherd
        from sockherd.workers import worker_loop

        original_run = worker_loop.Worker.run

        def profiled_run(self: worker_loop.Worker) -> int:
            profiler = cProfile.Profile()
            profiler.enable()
            try:
                return original_run(self)
            finally:
                profiler.disable()
                profiler.dump_stats(os.path.join(out_dir, f"{mode}.worker.{os.getpid()}.prof"))

        worker_loop.Worker.run = profiled_run  # type: ignore[method-assign]
        server = sockherd.PreforkTCPServer(
            address, EchoHandler, workers=4, handoff=mode.split("-")[1]
        )
    else:
        module = __import__("sockherd" if mode.startswith("sockherd") else "socketserver")
        server = module.ForkingTCPServer(address, EchoHandler)
        # CPython's shutdown() from the serving thread would deadlock: stop from a flag.
        signal.signal(signal.SIGTERM, lambda *_: setattr(server, "_bench_stop", True))
        server.service_actions = _stop_when_flagged(server, server.service_actions)
    print(server.server_address[1], flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        profiler.disable()
        profiler.dump_stats(os.path.join(out_dir, f"{mode}.parent.{os.getpid()}.prof"))
        server.server_close()


def _stop_when_flagged(server, service_actions):
    def checked() -> None:
        service_actions()
        if getattr(server, "_bench_stop", False):
            server._BaseServer__shutdown_request = True  # CPython's loop flag

    return checked


def profile_mode(mode: str, seconds: float, out_dir: str, build_dir: str) -> int:
    """Run one profiled server under load; return the requests the load generator saw."""
    for old in glob.glob(os.path.join(out_dir, f"{mode}.*.prof")):
        os.unlink(old)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--out", out_dir],
        stdout=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {1}),
    )
    try:
        port = int(server.stdout.readline())
        time.sleep(0.5)  # workers boot
        result = subprocess.run(
            [os.path.join(build_dir, "loadgen"), "--port", str(port), "--mode", "echo"]
            + ["--concurrency", "16", "--duration", str(seconds), "--timeout", "10"],
            capture_output=True,
            text=True,
            timeout=seconds + 20,
            preexec_fn=lambda: os.sched_setaffinity(0, {0}),
        )
        requests = json.loads(result.stdout)["requests"]
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        server.stdout.close()
    return requests


def summarize(mode: str, requests: int, out_dir: str, top: int) -> str:
    """Per role: CPU seconds profiled, µs per request, top functions by own time."""
    lines = [f"## {mode}: {requests} requests in the load window"]
    for role in ("parent", "worker"):
        files = glob.glob(os.path.join(out_dir, f"{mode}.{role}.*.prof"))
        if not files:
            continue
        stream = io.StringIO()
        stats = pstats.Stats(*files, stream=stream)
        per_request = 1e6 * stats.total_tt / max(requests, 1)
        lines.append(
            f"### {role} ({len(files)} process(es)): {stats.total_tt:.2f} s profiled, "
            f"{per_request:.1f} µs per request (cProfile inflates this), "
            f"{stats.total_calls / max(requests, 1):.1f} function calls per request"
        )
        stats.sort_stats("tottime").print_stats(top)
        body = stream.getvalue()
        lines.append(body[body.find("   ncalls") :].rstrip())
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(HERE, "build", "profiles"))
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("modes", nargs="*", default=list(MODES))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.serve:
        serve_profiled(args.serve, args.out)
        return
    from build import build

    build_dir = build()
    for mode in args.modes:
        requests = profile_mode(mode, args.seconds, args.out, build_dir)
        print(summarize(mode, requests, args.out, args.top), flush=True)


if __name__ == "__main__":
    main()
