"""The supervisor's own states, and every legal move between them.

Theory of operation
-------------------
An Arbiter is STARTING from its creation until its loop waits for the first time;
then RUNNING.  A HUP (or `ctl reload`) makes it RELOADING until the new generation
of every pool is ready, then RUNNING again.  UPGRADING is the same for an in-place
upgrade (`upgrade`): from RUNNING in the old image, and from STARTING in the new
image, which adopts the old workers and waits for its own.  TERM, INT or `ctl stop`
make it DRAINING: the listeners are no longer served, requests in progress finish
(within `graceful_timeout`), and the control socket and the metrics endpoint keep
answering, because draining happens inside the loop.  When nothing is left in
flight -- or at once, after QUIT or a signal that arrives before the loop runs --
it is STOPPED, and the loop ends.

Rule (after h11): every state change goes through `SupervisorState.move()`, so an
impossible move (RUNNING after STOPPED) raises `IllegalTransition` naming both states.
"""

from __future__ import annotations

import enum
import time


class State(enum.Enum):
    """A supervisor state; the value is the name reports use."""

    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    UPGRADING = "upgrading"
    DRAINING = "draining"
    STOPPED = "stopped"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.UPGRADING, State.DRAINING, State.STOPPED}),
    State.RUNNING: frozenset({State.RELOADING, State.UPGRADING, State.DRAINING, State.STOPPED}),
    State.RELOADING: frozenset({State.RUNNING, State.DRAINING, State.STOPPED}),
    State.UPGRADING: frozenset({State.RUNNING, State.DRAINING, State.STOPPED}),
    State.DRAINING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A supervisor state change that the table does not allow."""

    def __init__(self, old: State, new: State) -> None:
        super().__init__(f"the supervisor cannot go from {old.name} to {new.name}")
        self.old, self.new = old, new


class SupervisorState:
    """The current state and when it was entered; the one place it changes."""

    def __init__(self) -> None:
        self.current = State.STARTING
        self.since = time.monotonic()

    def move(self, new: State) -> None:
        """Enter `new`; staying put is allowed, a move the table forbids raises."""
        if new is self.current:
            return
        if new not in TRANSITIONS[self.current]:
            raise IllegalTransition(self.current, new)
        self.current = new
        self.since = time.monotonic()

    def is_(self, *states: State) -> bool:
        """Whether the current state is one of `states`."""
        return self.current in states
