"""What `sockherd serve --bind` accepts, parsed into a `Listener`.

    tcp://HOST:PORT   tcp://[IPV6]:PORT   udp://HOST:PORT   unix:/path   unix:///path
    fd://N (or fd:N)  systemd             HOST:PORT (TCP, or UDP with --udp)

`fd://N` adopts a listening socket inherited as descriptor N; `systemd` adopts
every socket passed by systemd's socket activation (LISTEN_FDS).  A Unix path is
served as a stream socket, or as datagrams with `--udp`.  Every error is a
`BindSpecError` whose message shows the accepted forms.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from .supervisor.listen_fds import inherited_socket, systemd_sockets

FORMS = "tcp://HOST:PORT, udp://HOST:PORT, unix:/path, fd://N, systemd or HOST:PORT"


class BindSpecError(ValueError):
    """A --bind value cannot be understood; the message says which and what would do."""


@dataclass
class Listener:
    """One address to serve: a family and address to bind, or an inherited socket."""

    family: int
    address: Any
    datagram: bool
    inherited: socket.socket | None = None

    @property
    def url(self) -> str:
        """How log lines name it: tcp://127.0.0.1:8000, udp://[::1]:53, unix:/run/x.sock."""
        if self.family == getattr(socket, "AF_UNIX", None):
            path = self.address if isinstance(self.address, str) else repr(self.address)
            return ("unixgram:" if self.datagram else "unix:") + path
        host, port = self.address[0], self.address[1]
        if self.family == socket.AF_INET6:
            host = f"[{host}]"
        return f"{'udp' if self.datagram else 'tcp'}://{host}:{port}"


def parse_binds(specs: tuple[str, ...] | list[str], udp: bool = False) -> list[Listener]:
    """Every listener the --bind values name, in order; BindSpecError on the first bad one.

    `udp` makes a plain HOST:PORT or unix: path a datagram listener.
    """
    listeners: list[Listener] = []
    for spec in specs:
        if spec == "systemd":
            sockets = systemd_sockets()
            if not sockets:
                raise BindSpecError(
                    "--bind systemd: no socket was passed (LISTEN_FDS/LISTEN_PID unset); "
                    "start sockherd from a systemd .socket unit or bind an address"
                )
            listeners.extend(_adopted(sock) for sock in sockets)
        else:
            listeners.append(parse_bind(spec, udp))
    return listeners


def parse_bind(spec: str, udp: bool = False) -> Listener:
    """One --bind value (not `systemd`) as a Listener; BindSpecError if malformed."""
    scheme, sep, rest = spec.partition("://")
    if not sep:
        if spec.startswith("fd:"):
            scheme, rest = "fd", spec[3:]
        elif spec.startswith("unix:"):
            scheme, rest = "unix", spec[5:]
        else:
            scheme, rest = ("udp" if udp else "tcp"), spec
    if scheme == "fd":
        if not rest.isdigit():
            raise BindSpecError(f"--bind {spec!r}: fd:// needs a descriptor number, e.g. fd://3")
        return _adopted(inherited_socket(int(rest)))
    if scheme == "unix":
        if not rest:
            raise BindSpecError(f"--bind {spec!r}: unix: needs a path, e.g. unix:/tmp/app.sock")
        if not hasattr(socket, "AF_UNIX"):
            raise BindSpecError(f"--bind {spec!r}: this system has no Unix domain sockets")
        return Listener(socket.AF_UNIX, rest, udp)
    if scheme not in ("tcp", "udp"):
        raise BindSpecError(f"--bind {spec!r}: unknown scheme {scheme!r}; use {FORMS}")
    family, address = _host_port(spec, rest)
    return Listener(family, address, scheme == "udp")


def _host_port(spec: str, text: str) -> tuple[int, tuple[str, int]]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise BindSpecError(f"--bind {spec!r} is not an address sockherd knows; use {FORMS}")
    port = int(port_text)
    if port > 65535:
        raise BindSpecError(f"--bind {spec!r}: the port must be between 0 and 65535")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], port)
    if ":" in host:
        raise BindSpecError(f"--bind {spec!r}: write an IPv6 address in brackets, e.g. [::1]:8000")
    return socket.AF_INET, (host, port)


def _adopted(sock: socket.socket) -> Listener:
    return Listener(sock.family, sock.getsockname(), sock.type == socket.SOCK_DGRAM, sock)
