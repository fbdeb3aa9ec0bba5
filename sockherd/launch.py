"""What `sockherd serve` runs: load the target, build one server per listener, serve.

The target is `MODULE:ATTRIBUTE`, either a request handler class (a subclass of
sockherd's or socketserver's `BaseRequestHandler`), served on every --bind
address in the chosen mode, or a factory: a function that takes no arguments
and returns a server it built itself (its own address and class; --bind and
--mode are then not used).  Every mistake a person can make here raises
`LaunchError` with one line that says what is wrong and what to do.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import socketserver as stdlib_socketserver
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .bind import Listener, parse_bind
from .server.base_server import BaseServer
from .server.socket_servers import TCPServer
from .supervisor.listen_fds import adopt_socket
from .supervisor.prefork import PreforkMixIn
from .supervisor.settings import TABLE

log = logging.getLogger("sockherd")

LOG_FORMAT = "sockherd[%(process)d] %(levelname)s: %(message)s"

_CLASS_NAMES = {
    # (Unix domain?, datagrams?) -> socketserver class name
    (False, False): "TCPServer",
    (False, True): "UDPServer",
    (True, False): "UnixStreamServer",
    (True, True): "UnixDatagramServer",
}
_MODE_PREFIXES = {"sync": "", "thread": "Threading", "fork": "Forking", "prefork": "Prefork"}
PREFORK_ONLY = tuple(name for name, setting in TABLE.items() if setting.scope == "prefork")
# Settings of the Arbiter in every mode that a prefork server also carries as attributes.
SUPERVISOR_SETTINGS = ("graceful_timeout",)
_BOUNDS = (("min_workers", "max_workers"), ("min_spare_workers", "max_spare_workers"))


class LaunchError(Exception):
    """The command cannot start as asked; the message says what is wrong and what to do."""


@dataclass
class Target:
    """What MODULE:ATTRIBUTE named: a handler class, or a factory returning a server."""

    path: str
    handler: type | None = None
    factory: Callable[[], Any] | None = None


def configure_logging(level: str) -> None:
    """Send log records at `level` and above to stderr, one readable line each."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)


def load_target(path: str) -> Target:
    """Import MODULE:ATTRIBUTE and tell a handler class from a server factory."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise LaunchError(
            f"{path!r} must be MODULE:HANDLER or MODULE:FACTORY, "
            "e.g. sockherd.examples.echo:EchoHandler"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise LaunchError(
            f"{path!r}: cannot import module {module_name!r} ({error}); "
            "check the name and that it is on PYTHONPATH"
        )
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise LaunchError(
            f"{path!r}: module {module_name!r} has no attribute {attribute!r}; "
            f"it has: {', '.join(_public_names(module)) or 'no public names'}"
        )
    if isinstance(value, type):
        if _is_handler(value):
            return Target(path, handler=value)
        raise LaunchError(
            f"{path!r} is the class {value.__name__}, not a request handler: "
            "name a subclass of socketserver.BaseRequestHandler, or a function returning a server"
        )
    if callable(value):
        return Target(path, factory=value)
    raise LaunchError(
        f"{path!r} is a {type(value).__name__}, not a request handler class "
        "or a function returning a server"
    )


def build_servers(
    target: Target, listeners: list[Listener], mode: str, options: dict[str, Any]
) -> list[Any]:
    """The servers to run: one per listener for a handler, the factory's one otherwise."""
    if target.factory is not None:
        return [_call_factory(target)]
    assert target.handler is not None
    settings = prefork_settings(options) if mode == "prefork" else {}
    servers: list[Any] = []
    try:
        for listener in listeners:
            servers.append(_server_for(listener, target.handler, mode, settings))
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    return servers


def prefork_settings(options: dict[str, Any]) -> dict[str, Any]:
    """PreforkMixIn keyword arguments from the resolved command-line options.

    Every prefork setting that is not None, under its class attribute's name
    (`worker_timeout`), and graceful_timeout.  LaunchError if a lower bound exceeds its
    upper bound.  The control socket is the Arbiter's, in every mode.
    """
    settings = {
        setting.attribute: options[name]
        for name, setting in TABLE.items()
        if (setting.scope == "prefork" or name in SUPERVISOR_SETTINGS)
        and setting.attribute
        and options.get(name) is not None
    }
    if "refork_after" in settings:  # repeatable settings are read as text
        settings["refork_after"] = tuple(int(n) for n in settings["refork_after"])
    if options.get("min_workers") == 0 and not options.get("autoscale"):
        raise LaunchError("--min-workers 0 (scale to zero) needs --autoscale")
    for low_name, high_name in _BOUNDS:
        low, high = options.get(low_name), options.get(high_name)
        if low is not None and high is not None and low > high:
            raise LaunchError(
                f"{TABLE[low_name].flag} {low} is more than {TABLE[high_name].flag} {high}"
            )
    return settings


def apply_common_settings(servers: list[Any], options: dict[str, Any]) -> None:
    """Settings every mode has: the read timeout, and metrics on the first server.

    Servers whose default metrics label (their address) would collide, such as
    tcp:// and udp:// on one port, are labelled with their URL instead.
    """
    for server in servers:
        if options.get("read_timeout") is not None:
            server.read_timeout = options["read_timeout"]
        if options.get("freeze_heap") is not None:
            server.freeze_heap = options["freeze_heap"]
    labels = [_address_label(server) for server in servers]
    for server, label in zip(servers, labels, strict=True):
        if labels.count(label) > 1 and not getattr(server, "metrics_name", None):
            server.metrics_name = server_url(server)
    first = servers[0]
    if options.get("metrics"):
        listener = parse_bind(options["metrics"])
        if listener.datagram or listener.family not in (socket.AF_INET, socket.AF_INET6):
            raise LaunchError(
                f"--metrics {options['metrics']!r} must be HOST:PORT, e.g. 127.0.0.1:9100"
            )
        first.metrics_address = listener.address
        if options.get("metrics_auth_file"):
            first.metrics_basic_auth = read_credentials(options["metrics_auth_file"])
        cert, key = options.get("metrics_tls_cert"), options.get("metrics_tls_key")
        if bool(cert) != bool(key):
            raise LaunchError("--metrics-tls-cert and --metrics-tls-key go together: give both")
        for path in (cert, key):
            if path and not os.access(path, os.R_OK):
                raise LaunchError(f"cannot read {path}: check the path and its permissions")
        first.metrics_tls_certfile, first.metrics_tls_keyfile = cert, key
    elif any(options.get(n) for n in ("metrics_auth_file", "metrics_tls_cert", "metrics_tls_key")):
        raise LaunchError("--metrics-auth-file and --metrics-tls-* need --metrics HOST:PORT")


def read_credentials(path: str) -> tuple[str, str]:
    """`user:password` from the first line of a file (kept off the command line)."""
    try:
        with open(path, encoding="utf-8") as file:
            line = file.readline().rstrip("\r\n")
    except OSError as error:
        raise LaunchError(f"cannot read the metrics credentials file {path}: {error.strerror}")
    user, sep, password = line.partition(":")
    if not sep or not user or not password:
        raise LaunchError(f"the metrics credentials file {path} must hold one line USER:PASSWORD")
    return user, password


def _address_label(server: BaseServer) -> str:
    from .metrics.snapshot import server_label

    return server_label(server)


def server_url(server: TCPServer) -> str:
    """A bound server's address as a URL: tcp://127.0.0.1:8000, unix:/run/app.sock, …"""
    address = server.server_address
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    datagram = server.socket_type == socket.SOCK_DGRAM
    return Listener(server.address_family, address, datagram).url


def describe(server: TCPServer, mode: str) -> str:
    """How the "listening on" line names a server: its URL and how it serves."""
    url = server_url(server)
    if isinstance(server, PreforkMixIn):
        count = server.pool_settings().workers
        return f"{url} (prefork, {count} worker{'' if count == 1 else 's'})"
    return f"{url} ({mode})"


def mode_of(server: BaseServer) -> str:
    """The mode a factory's server runs in, from its class."""
    from .metrics.snapshot import server_mode

    return server_mode(server)


# --- helpers -----------------------------------------------------------------------------


def _server_for(listener: Listener, handler: type, mode: str, settings: dict[str, Any]) -> Any:
    cls = server_class(mode, listener.family, listener.datagram)
    inherited = listener.inherited
    server = cls(listener.address, handler, bind_and_activate=inherited is None, **settings)
    if inherited is not None:
        adopt_socket(server, inherited)
    return server


def server_class(mode: str, family: int, datagram: bool) -> type:
    """A sockherd server class for a mode, an address family and a transport.

    A TCP server gets `allow_reuse_address`, so a restarted server need not wait
    out TIME_WAIT; an IPv6 address gets `address_family = AF_INET6`.
    """
    import sockherd

    unix = family == getattr(socket, "AF_UNIX", None)
    base = getattr(sockherd, _MODE_PREFIXES[mode] + _CLASS_NAMES[(unix, datagram)])
    attributes: dict[str, Any] = {"address_family": family}
    if not unix and not datagram:
        attributes["allow_reuse_address"] = True
    return type(base.__name__, (base,), attributes)


def _call_factory(target: Target) -> Any:
    assert target.factory is not None
    try:
        server = target.factory()
    except OSError:
        raise  # a bind error and the like: reported as such
    except Exception as error:
        log.debug("the factory %s raised", target.path, exc_info=True)
        raise LaunchError(
            f"the factory {target.path!r} raised {type(error).__name__}: {error} "
            "(--log-level debug shows the traceback)"
        )
    import sockherd

    if not isinstance(server, sockherd.BaseServer):
        if isinstance(server, stdlib_socketserver.BaseServer):
            server.server_close()
            raise LaunchError(
                f"the factory {target.path!r} returned a stdlib socketserver "
                f"{type(server).__name__}: build it from sockherd's classes instead "
                "(import sockherd as socketserver), so that signals and metrics work"
            )
        raise LaunchError(
            f"the factory {target.path!r} returned a {type(server).__name__}, not a server: "
            "it must return a sockherd server instance"
        )
    return server


def _is_handler(cls: type) -> bool:
    import sockherd

    return issubclass(cls, sockherd.BaseRequestHandler | stdlib_socketserver.BaseRequestHandler)


def _public_names(module: Any) -> list[str]:
    names = [name for name in vars(module) if not name.startswith("_")]
    return sorted(names)[:12]
