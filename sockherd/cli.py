"""The `sockherd` command.

    sockherd serve MODULE:HANDLER [--bind ADDRESS] [--udp]
                   [--mode sync|threading|forking|prefork] [--workers N] [--handoff accept|dispatch]
                   [--control PATH] [--metrics HOST:PORT]
    sockherd ctl --control PATH status | scale N | reload | stop

ADDRESS is `HOST:PORT`, `[IPV6]:PORT`, `unix:/path`, or an inherited listening
socket: `fd:N`, or `systemd` for the first socket of systemd's socket activation
(LISTEN_FDS).  The server runs in the foreground; SIGTERM or SIGINT stop it
cleanly (the listening socket is closed and children are reaped).  Once it
listens it prints one line to stderr:
`sockherd: serving MODULE:HANDLER on ADDRESS (MODE)`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import socket
import sys
from typing import Any

from .config import OPTIONS, ConfigError, environment, resolve
from .supervisor.control import ControlError, send_command
from .supervisor.listen_fds import ListenFdsError, adopt_socket, inherited_socket, systemd_sockets

MODES = ("sync", "threading", "forking", "prefork")


class UsageError(Exception):
    """A command-line value is wrong; the message says which and how to fix it."""


def parse_address(text: str) -> tuple[int, Any]:
    """Turn `HOST:PORT`, `[V6]:PORT` or `unix:/path` into (address family, address).

    `fd:N` and `systemd` name an inherited socket: the family is then -1 and the
    address the socket itself.
    """
    if text == "systemd":
        sockets = systemd_sockets()
        if not sockets:
            raise UsageError("--bind systemd: no socket was passed (LISTEN_FDS/LISTEN_PID unset)")
        return -1, sockets[0]
    if text.startswith("fd:"):
        if not text[3:].isdigit():
            raise UsageError(f"--bind {text!r}: fd: needs a file descriptor number, e.g. fd:3")
        return -1, inherited_socket(int(text[3:]))
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise UsageError("--bind unix: needs a path, e.g. unix:/tmp/sockherd.sock")
        return socket.AF_UNIX, path
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise UsageError(
            f"--bind {text!r} is not HOST:PORT, [IPV6]:PORT or unix:/path "
            "(for example 127.0.0.1:8000)"
        )
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise UsageError(f"--bind {text!r}: the port must be between 0 and 65535")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], port)
    return socket.AF_INET, (host, port)


def load_handler(path: str) -> type:
    """Import `module:attribute` and return the handler class it names."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"handler {path!r} must be MODULE:CLASS, e.g. sockherd.examples.echo:EchoHandler"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"handler {path!r}: cannot import module {module_name!r}: {error}")
    try:
        handler = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"handler {path!r}: module {module_name!r} has no attribute {attribute!r}")
    if not isinstance(handler, type):
        raise UsageError(
            f"handler {path!r} is a {type(handler).__name__}, not a request handler class"
        )
    return handler


_CLASS_NAMES = {
    # (Unix domain?, datagrams?) -> socketserver class name
    (False, False): "TCPServer",
    (False, True): "UDPServer",
    (True, False): "UnixStreamServer",
    (True, True): "UnixDatagramServer",
}
_MODE_PREFIXES = {"sync": "", "threading": "Threading", "forking": "Forking", "prefork": "Prefork"}


def server_class(mode: str, family: int, udp: bool) -> type:
    """A sockherd server class for a concurrency mode, address family and transport.

    A TCP server gets `allow_reuse_address` so a restarted server need not wait
    out TIME_WAIT; an IPv6 address gets `address_family = AF_INET6`.
    """
    import sockherd

    unix = family == getattr(socket, "AF_UNIX", None)
    base = getattr(sockherd, _MODE_PREFIXES[mode] + _CLASS_NAMES[(unix, udp)])
    attributes: dict[str, Any] = {"address_family": family}
    if not unix and not udp:
        attributes["allow_reuse_address"] = True
    return type(base.__name__, (base,), attributes)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockherd", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a socketserver request handler")
    serve.add_argument("handler", help="MODULE:CLASS of a socketserver request handler")
    # Defaults are None here: unset flags fall back to SOCKHERD_* variables, then
    # --config, then the defaults in sockherd.config.
    serve.add_argument("--bind", help="HOST:PORT, unix:/path, fd:N or systemd")
    serve.add_argument("--mode", choices=MODES)
    serve.add_argument(
        "--udp", action="store_const", const=True, help="serve datagrams instead of streams"
    )
    serve.add_argument("--workers", type=int, help="prefork: worker processes (default: CPUs)")
    serve.add_argument("--handoff", choices=("accept", "dispatch"))
    serve.add_argument("--max-requests", type=int, help="prefork: recycle after N")
    serve.add_argument("--graceful-timeout", type=float, help="prefork: seconds to finish requests")
    serve.add_argument("--control", help="prefork: path of a Unix control socket (mode 0600)")
    serve.add_argument(
        "--metrics", help="serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9100)"
    )
    serve.add_argument("--config", help="a TOML file of settings (flags and SOCKHERD_* win)")
    ctl = commands.add_parser("ctl", help="send a command to a running prefork supervisor")
    ctl.add_argument("--control", required=True, help="the supervisor's control socket path")
    ctl.add_argument("words", nargs="+", help="status | scale N | reload | stop")
    return parser


def serve(
    handler_path: str,
    bind: str,
    mode: str,
    udp: bool,
    settings: dict[str, Any],
    metrics: str | None = None,
) -> int:
    """Run one server in the foreground until SIGTERM or SIGINT; return the exit status.

    `settings` are PreforkMixIn settings, used in prefork mode only.
    """
    family, address = parse_address(bind)
    handler = load_handler(handler_path)
    if settings.get("workers") is not None and settings["workers"] < 1:
        raise UsageError("--workers must be at least 1")
    inherited = address if family == -1 else None
    if inherited is not None:
        family, udp = inherited.family, inherited.type == socket.SOCK_DGRAM
        address = inherited.getsockname()
    cls = server_class(mode, family, udp)
    options: dict[str, Any] = {"bind_and_activate": inherited is None}
    if mode == "prefork":
        options.update({k: v for k, v in settings.items() if v is not None})
    server = cls(address, handler, **options)
    if inherited is not None:
        adopt_socket(server, inherited)
    if metrics:
        metrics_family, metrics_address = parse_address(metrics)
        if metrics_family not in (socket.AF_INET, socket.AF_INET6):
            raise UsageError(f"--metrics {metrics!r} must be HOST:PORT, e.g. 127.0.0.1:9100")
        server.metrics_address = metrics_address
    with server:
        if mode != "prefork":  # the prefork supervisor handles its own signals

            def stop(signum: int, frame: object) -> None:
                server.shutdown()  # from the serving thread: sockherd only asks the loop to stop

            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
        shown = server.server_address
        if isinstance(shown, tuple):
            shown = f"{shown[0]}:{shown[1]}"
        print(f"sockherd: serving {handler_path} on {shown} ({mode})", file=sys.stderr, flush=True)
        if metrics:
            print(f"sockherd: metrics at http://{metrics}/metrics", file=sys.stderr, flush=True)
        server.serve_forever()
    print("sockherd: stopped", file=sys.stderr, flush=True)
    return 0


def control_client(path: str, command: str) -> int:
    """`sockherd ctl`: print the supervisor's JSON reply; 0 if it says ok, 1 otherwise."""
    try:
        reply = send_command(path, command)
    except OSError as error:
        print(f"sockherd: cannot reach the supervisor at {path}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sockherd` console script."""
    args = _build_parser().parse_args(argv)
    if args.command == "ctl":
        return control_client(args.control, " ".join(args.words))
    try:
        flags = {name: getattr(args, name) for name in OPTIONS}
        options = resolve(flags, environment(), args.config)
        settings = {
            "workers": options["workers"],
            "handoff": options["handoff"],
            "max_requests": options["max_requests"],
            "graceful_timeout": options["graceful_timeout"],
            "control_socket": options["control"],
        }
        return serve(
            args.handler,
            options["bind"],
            options["mode"],
            options["udp"],
            settings,
            options["metrics"],
        )
    except (UsageError, ControlError, ListenFdsError, ConfigError) as error:
        print(f"sockherd: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"sockherd: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
