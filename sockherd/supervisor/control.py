"""The supervisor's control socket: a Unix socket for `sockherd ctl` and operators' scripts.

Protocol: the client connects, sends one command line, and reads one JSON
object followed by a newline; then the supervisor closes the connection.

    status        {"ok": true, "desired": 4, "generation": 0, "workers": [...], ...}
    scale N       set the desired worker count (N, +N or -N; bounded by min/max_workers)
    reload        rolling reload, as SIGHUP
    stop          graceful stop, as SIGTERM

Errors come back as {"ok": false, "error": "..."}.  Security: the socket is
created with mode 0600 and, where the kernel reports peer credentials
(Linux SO_PEERCRED), only the supervisor's own user and root are served;
anyone else gets {"ok": false, "error": "permission denied: uid N ..."} and the
supervisor logs one line naming the uid.  The loop never blocks on a client:
connections are non-blocking, a command line is capped at `MAX_LINE` bytes,
and a client that has not sent its line within `CLIENT_DEADLINE` seconds is
dropped.  Accept failures are counted by errno; EMFILE and the like pause
the listener with one logged warning per episode.  The listening, accepting,
deadlines and closing are `server.nonblocking_listener`'s; this module is the
protocol and the socket file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any

from ..server import carried_listeners
from ..server.accept_backoff import AcceptBackoff
from ..server.nonblocking_listener import AddSource, Client, NonBlockingListener, RemoveSource

log = logging.getLogger(__name__)

MAX_LINE = 1024
CLIENT_DEADLINE = 5.0


_SUN_PATH_MAX = 104  # bytes of a Unix socket path with its NUL: BSD's limit (Linux: 108)


class ControlError(Exception):
    """The control socket cannot be set up; the message says why and what to do."""


def _peer_uid(connection: socket.socket) -> int | None:
    """The connecting process's uid, or None where the platform cannot tell."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    credentials = connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


def _allowed_users() -> str:
    euid = os.geteuid()
    return "root" if euid == 0 else f"root or uid {euid}, the supervisor's user"


def _refusal(uid: int) -> str:
    return (
        f"permission denied: uid {uid} may not control this supervisor; connect as "
        f"{_allowed_users()}"
    )


class _Client(Client):
    """One control connection: what it sent so far, and whether it is refused."""

    __slots__ = ("buffer", "refused_uid")

    def __init__(self, connection: socket.socket, refused_uid: int | None) -> None:
        super().__init__(connection)
        self.buffer = bytearray()
        self.refused_uid = refused_uid


class ControlSocket:
    """The listening control socket and its clients, driven by the serve loop's wake sources."""

    def __init__(
        self,
        path: str,
        execute: Callable[[str], dict[str, Any]],
        add_source: AddSource,
        remove_source: RemoveSource,
    ) -> None:
        self.path = path
        self._execute = execute
        listener = self._bind(path)
        if not hasattr(socket, "SO_PEERCRED"):
            log.info("no SO_PEERCRED here: the control socket relies on its 0600 mode alone")
        self._server = NonBlockingListener(
            listener,
            f"the control socket {path!r}",
            add_source,
            remove_source,
            admit=self._admit,
            on_ready=self._read,
            client_deadline=CLIENT_DEADLINE,
        )

    @property
    def accept_backoff(self) -> AcceptBackoff:
        """The accept failures and back-off episode of the control socket."""
        return self._server.accept_backoff

    @staticmethod
    def _bind(path: str) -> socket.socket:
        key = carried_listeners.key_of("control", socket.AF_UNIX, socket.SOCK_STREAM, path)
        carried = carried_listeners.take(key)  # an in-place upgrade carried it over
        if carried is not None:
            return carried
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise ControlError(f"control socket path {path!r} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: nobody listens there
            else:
                raise ControlError(
                    f"control socket {path!r} is in use by another supervisor; stop it or "
                    "choose another path"
                )
            finally:
                probe.close()
        # Bound under a temporary name and renamed once it listens: a client that sees the
        # path never finds it refusing connections.
        temporary = f"{path}.{os.getpid()}.new"
        if len(os.fsencode(temporary)) >= _SUN_PATH_MAX:
            temporary = path  # no room for a longer name
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is born 0600
        try:
            listener.bind(temporary)
            listener.listen(16)
            if temporary != path:
                os.rename(temporary, path)
        except OSError as error:
            listener.close()
            if temporary != path and os.path.exists(temporary):
                os.unlink(temporary)
            raise ControlError(f"cannot create control socket {path!r}: {error.strerror}")
        finally:
            os.umask(old_umask)
        carried_listeners.remember(key, listener)
        return listener

    def _admit(self, connection: socket.socket) -> _Client:
        uid = _peer_uid(connection)
        refused_uid = None
        if uid is not None and uid not in (0, os.geteuid()):
            # Refused now, answered once its command line is in: a reply sent before
            # the client has written would make its send fail (EPIPE) and hide the reply.
            log.warning(
                "control socket %r: refused a client running as uid %d (only %s may use it)",
                self.path,
                uid,
                _allowed_users(),
            )
            refused_uid = uid
        return _Client(connection, refused_uid)

    def _read(self, client: _Client) -> None:
        connection, buffer = client.connection, client.buffer
        try:
            chunk = connection.recv(MAX_LINE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        buffer += chunk
        if b"\n" in buffer or not chunk or len(buffer) >= MAX_LINE:
            line = bytes(buffer).split(b"\n", 1)[0].decode(errors="replace").strip()
            if client.refused_uid is not None:
                reply = {"ok": False, "error": _refusal(client.refused_uid)}
            elif len(buffer) >= MAX_LINE and b"\n" not in buffer:
                reply = {"ok": False, "error": f"command longer than {MAX_LINE} bytes"}
            elif not line:
                reply = {"ok": False, "error": "empty command"}
            else:
                reply = self._execute(line)
            self._reply(connection, reply)
            self._server.drop(client)

    @staticmethod
    def _reply(connection: socket.socket, reply: dict[str, Any]) -> None:
        try:
            connection.send(json.dumps(reply).encode() + b"\n")
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EAGAIN):
                log.warning("control socket: could not reply: %s", error)

    def accept_errors(self) -> dict[str, int]:
        """Failed accepts of the control socket, by errno name."""
        return self._server.accept_errors()

    def expire_slow_clients(self) -> None:
        """Drop clients that have not sent a whole command within CLIENT_DEADLINE; watch the
        listener again once an accept back-off has run out.  Call once per loop iteration."""
        self._server.expire_slow_clients()

    def close_in_worker(self) -> None:
        """In a forked worker: close the inherited sockets, leave the socket file alone."""
        self._server.close_in_child()

    def close(self) -> None:
        """Close every connection and the listener, and remove the socket file."""
        self._server.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def send_command(path: str, command: str, timeout: float = 10.0) -> dict[str, Any]:
    """Client side: send one command to the supervisor at `path` and return its JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(path)
        client.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def unreachable(path: str, error: OSError | ValueError) -> str:
    """The one line `sockherd ctl` prints when the supervisor at `path` does not answer."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else error
    return (
        f"sockherd: cannot reach the supervisor at {path}: {reason or 'no reply'}; "
        "is it running with --control pointing there?"
    )
