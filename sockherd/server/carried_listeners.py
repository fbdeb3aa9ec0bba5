"""Listening sockets carried across an in-place upgrade (`exec` of the same process).

Theory of operation
-------------------
Every listener sockherd binds -- a server's socket, the control socket, the metrics
endpoint -- is remembered here under a key that names what was asked for (the
requested address, not the bound one, so that port 0 finds its socket again).
An upgrade calls `pass_on()` just before `exec`: each remembered listener that is
still open becomes inheritable, and their fds are named, by key, in the
environment variable `SOCKHERD_LISTENERS`.  The new image's binds call `take(key)`
first: a carried socket is used as it is, already bound and listening, so no
connection is refused while the process changes its code.  `close_unclaimed()`
closes what the new configuration no longer binds.

Without the variable (every start but an upgrade) `take()` finds nothing and
nothing changes.  Sockets are remembered weakly: a closed server leaves no trace.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import weakref

log = logging.getLogger("sockherd")

ENVIRONMENT = "SOCKHERD_LISTENERS"

_remembered: weakref.WeakValueDictionary[str, socket.socket] = weakref.WeakValueDictionary()
_carried: dict[str, int] | None = None  # read from the environment on first use


def key_of(kind: str, family: int, sock_type: int, address: object) -> str:
    """The key of a listener: what it is and the address it was asked to bind."""
    if isinstance(address, bytes):
        address = address.decode("utf-8", "surrogateescape")
    if isinstance(address, tuple):
        address = list(address[:2])
    return json.dumps([kind, int(family), int(sock_type), address])


def _inherited() -> dict[str, int]:
    global _carried
    if _carried is None:
        text = os.environ.pop(ENVIRONMENT, "")
        try:
            carried = json.loads(text) if text else {}
        except ValueError:
            log.warning("%s is not valid JSON; no listener is carried over", ENVIRONMENT)
            carried = {}
        _carried = {str(key): int(fd) for key, fd in carried.items()}
    return _carried


def take(key: str) -> socket.socket | None:
    """The carried listener for `key` (made non-inheritable again), or None."""
    fd = _inherited().pop(key, None)
    if fd is None:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        log.warning("carried listener fd %d is unusable (%s); binding anew", fd, error)
        return None
    sock.set_inheritable(False)
    remember(key, sock)
    return sock


def remember(key: str, sock: socket.socket) -> None:
    """Note a listener just bound (or taken), so that an upgrade can carry it."""
    _remembered[key] = sock


def pass_on() -> dict[str, int]:
    """Make every remembered open listener inheritable and name them in the environment.

    Returns {key: fd}.  Called just before `exec`; `keep_private()` undoes it if the
    exec fails.
    """
    fds = {}
    for key, sock in list(_remembered.items()):
        if sock.fileno() >= 0:
            sock.set_inheritable(True)
            fds[key] = sock.fileno()
    os.environ[ENVIRONMENT] = json.dumps(fds)
    return fds


def keep_private() -> None:
    """Undo `pass_on()` (the exec failed): the listeners are not inheritable any more."""
    os.environ.pop(ENVIRONMENT, None)
    for sock in list(_remembered.values()):
        if sock.fileno() >= 0:
            sock.set_inheritable(False)


def close_unclaimed() -> list[str]:
    """Close the carried listeners nothing took (the new configuration dropped them);
    return their keys."""
    left = _inherited()
    closed = list(left)
    for key, fd in list(left.items()):
        log.info("closing a carried listener the new configuration does not use: %s", key)
        try:
            os.close(fd)
        except OSError:
            pass
        del left[key]
    return closed
