"""The servers under test, one per name, each started in its own process.

    python bench/servers.py NAME [--workers N] [--metrics PORT] [--keepalive]

Prints the listening port on stdout once it listens, then serves on 127.0.0.1
until killed.  The runner starts each server in a new session pinned to one
CPU and stops it with SIGKILL to the whole process group.

Echo servers run sockherd's `EchoHandler` (a `StreamRequestHandler`); HTTP
servers run http.server's `BaseHTTPRequestHandler` subclass `HelloHandler` from
sockherd's examples (`--keepalive`: the same handler speaking HTTP/1.1 with
TCP_NODELAY, so it keeps a connection open between requests).  The
`sockherd-prefork-threads` servers are the accept-mode pool with `THREADS` request
threads per worker; the other pools are sync workers (threads=1).  gunicorn and the C server are
started by the runner directly (see `command()`), and so is `sockherd serve` (the
`sockherd-serve-*` servers: the command as users run it).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# SOCKHERD_BENCH_TREE: measure the sockherd package of another source tree (an A/B of
# two versions, see cpu_ab.py); by default the one this bench belongs to.
sys.path.insert(0, os.environ.get("SOCKHERD_BENCH_TREE") or os.path.dirname(HERE))

from sockherd.examples.echo import EchoHandler  # noqa: E402
from sockherd.examples.hello_http import HelloHandler  # noqa: E402

ECHO_SERVERS = (
    "c-epoll",
    "cpython-sync",
    "cpython-threading",
    "cpython-forking",
    "handmade-prefork",
    "handmade-dispatch",
    "sockherd-sync",
    "sockherd-threading",
    "sockherd-forking",
    "sockherd-prefork-accept",
    "sockherd-prefork-dispatch",
    "sockherd-prefork-threads",
    "sockherd-serve-prefork-accept",
)
HTTP_SERVERS = (
    "c-epoll",
    "cpython-threading-http",
    "gunicorn-sync",
    "sockherd-prefork-accept-http",
    "sockherd-prefork-dispatch-http",
    "sockherd-prefork-threads-http",
    "sockherd-serve-prefork-accept-http",
)
SERVE_SERVERS = ("sockherd-serve-prefork-accept", "sockherd-serve-prefork-accept-http")
"""Served by the `sockherd serve` command exactly as users run it (a prefork pool in
accept mode), on a port the runner picks as it does for gunicorn."""
THREADS = 8  # request threads per worker of the sockherd-prefork-threads servers (accept mode)
# sockherd servers that take --metrics (the others have no metrics endpoint).
METRICS_CAPABLE = frozenset(
    name for name in ECHO_SERVERS + HTTP_SERVERS if "sockherd" in name and name not in SERVE_SERVERS
)
THREADS_ONLY_SERVERS = ("sockherd-prefork-threads16", "sockherd-prefork-threads16-http")
"""Servers measured only in the keep-alive threads cells: 16 threads per worker."""
CLASS_NAMES = {
    "sync": "TCPServer",
    "threading": "ThreadingTCPServer",
    "forking": "ForkingTCPServer",
}


class KeepAliveHelloHandler(HelloHandler):
    """HelloHandler speaking HTTP/1.1: the connection stays open between requests.

    With TCP_NODELAY (the stdlib's `disable_nagle_algorithm`): http.server sends the
    headers and the body in two writes, and on a kept-alive connection Nagle's
    algorithm holds the body until the client's delayed ACK, 40 ms per request."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True


def command(
    name: str,
    python: str,
    build_dir: str,
    workers: int,
    port: int,
    metrics_port: int | None = None,
    keepalive: bool = False,
) -> list[str]:
    """The argv that starts server `name`.  `port` is used only by gunicorn and
    `sockherd serve`, which do not print theirs (the others do); `metrics_port` only by
    the sockherd servers built here."""
    if name == "c-epoll":
        return [os.path.join(build_dir, "fastserver")]
    if name == "gunicorn-sync":
        return [
            python,
            "-m",
            "gunicorn",
            "--chdir",
            HERE,
            "--worker-class",
            "sync",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--backlog",
            str(socket.SOMAXCONN),
            "--log-level",
            "warning",
            "wsgi_app:application",
        ]
    if name in SERVE_SERVERS:
        handler = "hello_http:HelloHandler" if name.endswith("-http") else "echo:EchoHandler"
        return [
            python,
            "-m",
            "sockherd",
            "serve",
            f"sockherd.examples.{handler}",
            "--mode",
            "prefork",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ]
    argv = [python, os.path.abspath(__file__), name, "--workers", str(workers)]
    if metrics_port is not None:
        argv += ["--metrics", str(metrics_port)]
    return argv + (["--keepalive"] if keepalive else [])


def build_server(name: str, workers: int, keepalive: bool) -> Any:
    """A bound, listening server object for `name` (not the C server nor gunicorn)."""
    address = ("127.0.0.1", 0)
    http_handler = KeepAliveHelloHandler if keepalive else HelloHandler
    if name == "cpython-threading-http":
        import http.server

        return http.server.ThreadingHTTPServer(address, http_handler)
    if name.startswith("cpython-"):
        import socketserver

        return getattr(socketserver, CLASS_NAMES[name.split("-")[1]])(address, EchoHandler)
    import sockherd

    if name.startswith("sockherd-prefork-"):
        handler = http_handler if name.endswith("-http") else EchoHandler
        handoff = name.split("-")[2]
        if handoff.startswith("threads"):  # threads: THREADS per worker; threads16: 16
            threads = int(handoff[len("threads") :] or THREADS)
            return sockherd.PreforkTCPServer(address, handler, workers=workers, threads=threads)
        return sockherd.PreforkTCPServer(address, handler, workers=workers, handoff=handoff)
    return getattr(sockherd, CLASS_NAMES[name.split("-")[1]])(address, EchoHandler)


def serve_handmade_prefork(workers: int) -> None:
    """The Python ceiling: `workers` forked processes blocking in accept() on one socket,
    each running EchoHandler exactly as TCPServer would, with no supervision at all."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=socket.SOMAXCONN)
    print(listener.getsockname()[1], flush=True)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            _accept_forever(listener)
        children.append(pid)
    for _ in children:  # the runner SIGKILLs the whole process group
        os.wait()


def _accept_forever(listener: socket.socket) -> None:
    while True:
        _serve_echo(*listener.accept())


def _serve_echo(connection: socket.socket, address: Any) -> None:
    """EchoHandler on one connection, then shutdown and close, as TCPServer does."""
    try:
        EchoHandler(connection, address, None)
    except Exception:
        pass
    finally:
        try:
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        connection.close()


def serve_handmade_dispatch(workers: int) -> None:
    """The Python floor of a dispatch hand-off: one process accepts and passes each
    connection (SCM_RIGHTS) to an idle worker, which runs EchoHandler and sends one
    byte back when it is idle again -- sockherd's dispatch protocol with nothing else:
    no scoreboard, no timeouts, no supervision.  A worker holds one credit at most (its
    first "i", then one per connection served), so it is never sent a connection while
    it serves another."""
    import collections
    import selectors

    listener = socket.create_server(("127.0.0.1", 0), backlog=socket.SOMAXCONN)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    channels = []
    for _ in range(workers):
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.fork() == 0:
            parent_end.close()
            _serve_dispatched_forever(child_end)
        child_end.close()
        channels.append(parent_end)
    credits: collections.deque[socket.socket] = collections.deque()  # each worker sends "i" first
    selector = selectors.DefaultSelector()
    for channel in channels:
        selector.register(channel, selectors.EVENT_READ)
    watching_listener = False
    while True:  # the runner SIGKILLs the whole process group
        if bool(credits) != watching_listener:
            watching_listener = bool(credits)
            if watching_listener:
                selector.register(listener, selectors.EVENT_READ)
            else:
                selector.unregister(listener)
        for key, _ in selector.select():
            if key.fileobj is listener:
                while credits:
                    try:
                        connection, _address = listener.accept()
                    except BlockingIOError:
                        break
                    socket.send_fds(credits.popleft(), [b"c"], [connection.fileno()])
                    connection.close()
            else:
                credits.extend([key.fileobj] * len(key.fileobj.recv(64)))


def _serve_dispatched_forever(channel: socket.socket) -> None:
    channel.send(b"i")
    while True:
        _, fds, _, _ = socket.recv_fds(channel, 1, 1)
        connection = socket.socket(fileno=fds[0])
        _serve_echo(connection, connection.getpeername())
        channel.send(b"i")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "name", choices=sorted(set(ECHO_SERVERS + HTTP_SERVERS + THREADS_ONLY_SERVERS))
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--metrics", type=int, default=None, help="metrics port (sockherd)")
    parser.add_argument("--keepalive", action="store_true", help="HTTP/1.1 handler")
    args = parser.parse_args()
    if args.name == "handmade-prefork":
        serve_handmade_prefork(args.workers)
        return
    if args.name == "handmade-dispatch":
        serve_handmade_dispatch(args.workers)
        return
    server = build_server(args.name, args.workers, args.keepalive)
    if args.metrics is not None:
        server.metrics_address = ("127.0.0.1", args.metrics)
    print(server.server_address[1], flush=True)
    server.serve_forever()  # the runner SIGKILLs the whole process group


if __name__ == "__main__":
    main()
