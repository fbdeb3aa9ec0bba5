"""Loop hooks: how the layers above this one take part in a server's serve loop.

Theory of operation
-------------------
The socketserver layer knows nothing of supervision or metrics.  What the layers
above need from a serve loop is small and generic, and this module names it:

* `LoopHooks`: an object whose methods the loop calls at fixed points -- when
  `serve_forever()` starts, after every pass (after `service_actions()`, so an
  override that forgets `super()` cannot switch them off), whether to watch the
  listening socket now, whether a requested stop may end the loop yet (so a
  supervisor drains inside the loop), as the loop ends, in a freshly forked request child, and
  when a child of the server has been reaped.  Every method has a do-nothing
  default; a hook overrides what it needs.
* `BaseServer.attach_loop_hooks()`: an owner (the supervisor's Arbiter) attaches its
  hooks for good.
* `register_loop_extension()`: a factory consulted each time `serve_forever()`
  starts on a server that has *no* attached hooks; what it returns is attached for
  that loop only.  This is how `metrics_address` works on any sockherd server
  without this layer importing the metrics package: the package's top registers
  a factory that opens the endpoint only when the server asks for one.

Hooks run in the serving thread, never in signal context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base_server import BaseServer


class LoopHooks:
    """Callbacks a serve loop makes; every method may be overridden and does nothing here."""

    def loop_started(self, server: BaseServer) -> None:
        """`serve_forever()` is about to wait for the first time (in the serving thread)."""

    def after_iteration(self, server: BaseServer) -> None:
        """One pass of the loop is done (after `service_actions()`, whatever it does)."""

    def accepting(self, server: BaseServer) -> bool:
        """Whether the loop should watch `server`'s listening socket now (default: yes)."""
        return True

    def stop_requested(self, server: BaseServer) -> bool:
        """`shutdown()` has been called: may the loop end now?  A hook that returns False
        keeps the loop running (a supervisor drains first) and calls `shutdown()` again
        once it is done.  Asked before every wait until every hook says yes."""
        return True

    def loop_ending(self, server: BaseServer) -> None:
        """The loop has stopped; runs before `shutdown()` returns to its caller."""

    def in_forked_child(self, server: BaseServer) -> None:
        """In a request child just forked by `server`: close what only the parent may hold."""

    def child_reaped(self, server: BaseServer, pid: int) -> None:
        """A child process of `server` has been reaped (its pid may be reused from now on)."""

    def next_wake(self, server: BaseServer) -> float | None:
        """The `time.monotonic()` by which the loop must make its next pass (None: no
        deadline); the wait is cut short to meet it."""
        return None


LoopExtension = Callable[["BaseServer"], "LoopHooks | None"]

_extensions: list[LoopExtension] = []


def register_loop_extension(factory: LoopExtension) -> None:
    """Consult `factory(server)` whenever `serve_forever()` starts on a server without
    attached hooks; hooks it returns take part in that one loop.  Idempotent."""
    if factory not in _extensions:
        _extensions.append(factory)


def loop_extensions(server: BaseServer) -> list[LoopHooks]:
    """The hooks the registered factories want for one loop of `server`."""
    hooks = []
    for factory in _extensions:
        made = factory(server)
        if made is not None:
            hooks.append(made)
    return hooks
