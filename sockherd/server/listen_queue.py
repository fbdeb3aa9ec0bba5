"""How many connections wait in a listener's accept queue (Linux TCP_INFO), and its backlog.

Read by the autoscaler (connections waiting mean every worker is busy) and by the
metrics collector; elsewhere, or for a non-TCP socket, the kernel does not tell and
these return None / 0.
"""

from __future__ import annotations

import socket
import struct
import sys


def listen_queue(listener: socket.socket) -> tuple[int, int] | None:
    """(connections waiting in the accept queue, backlog) of a TCP listener; None where the
    kernel does not tell (not Linux, not TCP)."""
    if not sys.platform.startswith("linux") or listener.type != socket.SOCK_STREAM:
        return None
    if listener.family not in (socket.AF_INET, socket.AF_INET6) or listener.fileno() < 0:
        return None
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    # For a listening socket tcpi_unacked is the accept queue length, tcpi_sacked the backlog.
    waiting, backlog = struct.unpack_from("II", info, 24)
    return int(waiting), int(backlog)


def queued_connections(listener: socket.socket) -> int:
    """Connections waiting in a TCP listener's accept queue (Linux); 0 where unknown."""
    queue = listen_queue(listener)
    return queue[0] if queue else 0
