"""sockherd's extension points: how the layers above take part in a server's serve loop.

These are methods and properties of `BaseServer` (bound in its class body; they live
here to keep that module to the socketserver contract).  Each states its contract;
together with `loop_hooks.LoopHooks` they are the whole interface between the
socketserver layer and the layers above -- nothing above reads a private name.

* wake sources: `add_wake_source()`, `remove_wake_source()`;
* loop hooks: `attach_loop_hooks()`, `detach_loop_hooks()`, `loop_hooks`;
* several listeners in one loop: `join_loop()`, `loop_members`;
* the loop's state: `serving`, `accepting()`, `accept_paused_for()`, `accept_failed()`,
  `backlog_waiting()`;
* forked children: `close_loop_fds()`.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import TYPE_CHECKING

from .loop_hooks import LoopHooks

if TYPE_CHECKING:
    from .base_server import BaseServer


def add_wake_source(
    self: BaseServer, fd: int, callback: Callable[[], None], writable: bool = False
) -> None:
    """Wake the serve loop and run `callback` in it whenever `fd` is readable (or
    writable, with `writable`); again for the same fd changes callback and interest.

    Takes effect at once and in every later loop, until removed; a server that
    joined another's loop hands the fd to its host.  ForkingMixIn adds each child's
    exit fd; the supervisor its workers' fds, signal pipe, control socket, metrics.
    """
    loop = self._loop
    (loop.host._loop if loop.host is not None else loop).add_wake_source(fd, callback, writable)


def remove_wake_source(self: BaseServer, fd: int) -> None:
    """Stop watching `fd`.  Call it before closing the fd."""
    loop = self._loop
    (loop.host._loop if loop.host is not None else loop).remove_wake_source(fd)


def attach_loop_hooks(self: BaseServer, hooks: LoopHooks) -> None:
    """Let `hooks` take part in every later `serve_forever()` of this server; a server
    with attached hooks consults no registered loop extension."""
    self._loop.attached_hooks = (*self._loop.attached_hooks, hooks)


def detach_loop_hooks(self: BaseServer, hooks: LoopHooks) -> None:
    """Undo `attach_loop_hooks(hooks)`."""
    self._loop.attached_hooks = tuple(h for h in self._loop.attached_hooks if h is not hooks)


def loop_hooks(self: BaseServer) -> tuple[LoopHooks, ...]:
    """The hooks attached to the loop that serves this server."""
    return loop_members(self)[0]._loop.attached_hooks


def join_loop(self: BaseServer, host: BaseServer) -> None:
    """Be served by `host`'s loop (several listeners, one process): it watches this
    server's socket and wake sources and runs its `service_actions()`; `shutdown()`
    here stops that loop.  Permanent: close `host` first."""
    loop = self._loop
    if host is self or host._loop.host is not None or loop.guests or loop.host:
        raise ValueError(f"{self!r} cannot join the loop of {host!r}")
    loop.host = host
    host._loop.guests = (*host._loop.guests, self)


def loop_members(self: BaseServer) -> tuple[BaseServer, ...]:
    """Every server served by the loop that serves this one, the loop's own first."""
    host = self._loop.host or self
    return (host, *host._loop.guests)


def serving(self: BaseServer) -> bool:
    """True while a `serve_forever()` loop runs for this server (or its loop host)."""
    return loop_members(self)[0]._loop.serving_thread is not None


def accept_paused_for(self: BaseServer) -> float:
    """Seconds the listening socket stays unwatched after a resource error on accept
    (EMFILE and the like, see `accept_backoff`); 0 when accepting normally."""
    backoff = self._loop.accept_backoff
    return backoff.paused_for() if backoff is not None else 0.0


def accept_failed(self: BaseServer, error: OSError) -> float:
    """Count a failed accept() of this socket elsewhere (a prefork worker) and return
    the seconds to stop accepting (resource errors back off; see `accept_backoff`)."""
    backoff = self._loop.backoff()
    backoff.failed(error, self.server_address)
    return backoff.paused_for()


def accepting(self: BaseServer) -> bool:
    """Whether the loop should watch the listening socket now: the hooks of the loop
    serving this server decide (a prefork pool with no idle worker says no)."""
    hooks = loop_members(self)[0]._loop.running_hooks
    return all(hook.accepting(self) for hook in hooks)


def backlog_waiting(self: BaseServer) -> bool:
    """Whether a connection (a datagram) waits on this server's socket now: a zero-timeout
    poll() that reports POLLIN (not POLLERR or POLLNVAL).  False where there is no poll()."""
    loop, fd = self._loop, self.socket.fileno()
    if loop.backlog_poll is None or loop.backlog_poll[0] != fd:
        if not hasattr(select, "poll"):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        loop.backlog_poll = (fd, poller)
    return any(events & select.POLLIN for _fd, events in loop.backlog_poll[1].poll(0))


def close_loop_fds(self: BaseServer) -> None:
    """In a process forked from the serving one: close the fds only the serving process
    may hold -- the loops' wake-up pipes and whatever the loop hooks hold."""
    for member in loop_members(self):
        member._loop.close_wakeup()
    for hook in loop_members(self)[0]._loop.running_hooks:
        hook.in_forked_child(self)
