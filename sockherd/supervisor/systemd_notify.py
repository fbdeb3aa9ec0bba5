"""systemd's notify protocol, spoken directly: no libsystemd, no dependency.

Theory of operation
-------------------
A service that systemd starts with `Type=notify` (or `notify-reload`) finds in its
environment `NOTIFY_SOCKET`: the address of a datagram socket of the service
manager, either a filesystem path or, when it starts with `@`, a name in Linux's
abstract namespace.  The service tells the manager about itself by sending one
datagram per message, each a few `NAME=value` lines (`READY=1`, `STATUS=...`,
`RELOADING=1`, `MONOTONIC_USEC=...`, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=...`,
`WATCHDOG=1`, `MAINPID=...`).  The kernel attaches the sender's pid to the datagram,
so with `NotifyAccess=main` only the supervisor itself may speak.

`NotifySocket` is that sender: a non-blocking, close-on-exec `AF_UNIX`/`SOCK_DGRAM`
socket, made once and never connected (each message goes to the address with
`sendto()`, so a manager that re-creates its socket is still reached).  An absent
`NOTIFY_SOCKET` makes `notify_socket()` return None and the supervisor says nothing.
A failed send (no listener, a full queue) is logged once per episode, with one line
when sending works again, and is never fatal: systemd integration must not take a
serving process down.

`watchdog_interval()` reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be ours
when set), as `sd_watchdog_enabled()` does.  Forked children forget all of it
(`forget_in_child()`): a worker neither holds the socket nor sees the variables, so
neither it nor a library in a handler can speak for the supervisor.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_address(value: str) -> str:
    """The socket address of a `NOTIFY_SOCKET` value: `@name` is abstract (a leading NUL).

    Raises ValueError for what systemd never sends (a relative path, `vsock:`)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET={value!r} is neither an absolute path nor an @abstract name")


class NotifySocket:
    """Sends notify messages to one address; never raises on a failed send."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)  # a full manager queue costs a message, never the loop
        # Python's sockets are close-on-exec (PEP 446); say so, as the contract depends on it.
        self.sock.set_inheritable(False)
        self.failing = False  # a send failed and it has been logged; none since worked
        self.sent = 0

    def send(self, **fields: object) -> bool:
        """Send one datagram of `NAME=value` lines, in the order given; True if it went.

        A failure is logged once per episode (the next success says so) and swallowed."""
        if self.sock is None:
            return False
        message = "".join(f"{name}={value}\n" for name, value in fields.items())
        try:
            self.sock.sendto(message.encode(), self.address)
        except OSError as error:
            if not self.failing:
                self.failing = True
                log.warning(
                    "systemd notify: cannot send to %s (%s); the service goes on, "
                    "and this is logged once until a message gets through",
                    self.printable_address,
                    errno.errorcode.get(error.errno or 0, error.strerror or error),
                )
            return False
        if self.failing:
            self.failing = False
            log.info("systemd notify: messages get through to %s again", self.printable_address)
        self.sent += 1
        return True

    @property
    def printable_address(self) -> str:
        """The address as NOTIFY_SOCKET spells it."""
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def close(self) -> None:
        """Close the socket (idempotent); later sends do nothing."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def notify_socket(environ: Mapping[str, str] | None = None) -> NotifySocket | None:
    """A sender for `$NOTIFY_SOCKET`, or None when the variable is absent or unusable
    (logged once).  The variable is left in place: an in-place upgrade's new image
    (the same pid, after exec) reads it again."""
    env = os.environ if environ is None else environ
    value = env.get("NOTIFY_SOCKET")
    if not value:
        return None
    try:
        return NotifySocket(notify_address(value))
    except ValueError as error:
        log.warning("systemd notify: %s; not notifying", error)
    except OSError as error:
        log.warning("systemd notify: no datagram socket (%s); not notifying", error.strerror)
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float:
    """The watchdog's timeout in seconds from `WATCHDOG_USEC`, or 0 when there is none
    for this process: unset, not a positive number (logged), or `WATCHDOG_PID` names
    another process."""
    env = os.environ if environ is None else environ
    usec, owner = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec:
        return 0.0
    if owner and owner != str(os.getpid() if pid is None else pid):
        return 0.0
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("systemd notify: WATCHDOG_USEC=%r is not a positive number; no watchdog", usec)
        return 0.0
    return value / 1e6


def forget_in_child(sender: NotifySocket | None, environ: MutableMapping[str, str]) -> None:
    """In a forked child: close the inherited socket and drop the notify variables, so
    the child (and whatever it runs) cannot speak for the supervisor."""
    if sender is not None:
        sender.close()
    for name in NOTIFY_VARIABLES:
        environ.pop(name, None)
