"""Listening sockets handed over at start: systemd socket activation and explicit fds.

systemd (and compatible launchers) start a service with its sockets already
bound, as fds 3, 4, ... and the environment LISTEN_PID (the service's pid),
LISTEN_FDS (how many) and LISTEN_FDNAMES (their names).  `systemd_sockets()`
takes them over, as `sd_listen_fds(unset_environment=1)` does, so children
do not see them again.  `adopt_socket()` puts an inherited socket into a
server built with `bind_and_activate=False`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from ..server import carried_listeners
from ..server.socket_servers import TCPServer

SD_LISTEN_FDS_START = 3


class ListenFdsError(Exception):
    """An inherited socket is missing or unusable; the message says which and why."""


def systemd_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The sockets systemd passed to this process (possibly none), removing its variables."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not count or pid != str(os.getpid()):
        return _carried_systemd_sockets()
    try:
        number = int(count)
    except ValueError:
        raise ListenFdsError(f"LISTEN_FDS={count!r} is not a number")
    sockets = [inherited_socket(SD_LISTEN_FDS_START + index) for index in range(number)]
    for index, sock in enumerate(sockets):
        carried_listeners.remember(_systemd_key(index), sock)
    return sockets


def _systemd_key(index: int) -> str:
    return carried_listeners.key_of("systemd", 0, 0, index)


def _carried_systemd_sockets() -> list[socket.socket]:
    """After an in-place upgrade: the sockets systemd passed to the first image."""
    sockets: list[socket.socket] = []
    while (sock := carried_listeners.take(_systemd_key(len(sockets)))) is not None:
        sockets.append(sock)
    return sockets


def inherited_socket(fd: int) -> socket.socket:
    """Wrap an inherited listening fd; its family and type are read from the kernel."""
    key = carried_listeners.key_of("fd", 0, 0, fd)
    carried = carried_listeners.take(key)  # the same fd, carried by an in-place upgrade
    if carried is not None:
        return carried
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise ListenFdsError(f"fd {fd} is not an open socket: {error.strerror}")
    sock.set_inheritable(False)
    if sock.type == socket.SOCK_STREAM and not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise ListenFdsError(f"fd {fd} is a stream socket that is not listening")
    carried_listeners.remember(key, sock)
    return sock


def adopt_socket(server: TCPServer, sock: socket.socket) -> None:
    """Make `server` (built with bind_and_activate=False) serve on the inherited `sock`."""
    if (sock.family, sock.type) != (server.address_family, server.socket_type):
        raise ListenFdsError(
            f"{type(server).__name__} needs a {socket.AddressFamily(server.address_family).name}/"
            f"{socket.SocketKind(server.socket_type).name} socket, but the inherited one is "
            f"{sock.family.name}/{sock.type.name}"
        )
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()
