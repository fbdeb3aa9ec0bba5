"""Passing an accepted connection from the supervisor to a worker (dispatch mode).

One SCM_RIGHTS message per connection over the worker's Unix socket pair: the
fd, plus the client address pickled into the message body.  The supervisor
closes its copy after sending; the worker rebuilds a socket object of the
listener's family and type.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

MAX_MESSAGE = 4096
_INT = struct.Struct("i")  # a C int: SCM_RIGHTS carries an array of them


def send_connection(channel: socket.socket, connection: socket.socket, address: Any) -> None:
    """Send `connection` and its client `address` to the worker at the other end
    (`socket.send_fds()`'s message, without its array of one fd)."""
    rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, _INT.pack(connection.fileno()))
    channel.sendmsg([pickle.dumps(address)], [rights])


def receive_connection(
    channel: socket.socket, family: int, kind: int, proto: int = -1
) -> tuple[Any, Any] | None:
    """Receive one connection; None when the supervisor closed the channel.

    The socket object gets `family`, `kind` and `proto` (the listener's, as accept()
    gives them); with `proto` given, Python asks the kernel nothing more than it does
    for an accepted socket (a proto of -1 costs a getsockopt() per connection)."""
    message, fds, _flags, _address = socket.recv_fds(channel, MAX_MESSAGE, 1)
    if not fds:
        return None
    connection = socket.socket(family, kind, proto, fileno=fds[0])
    return connection, pickle.loads(message)
