"""The supervisor's state table and the restart reasons table: every legal move, and the
illegal ones refused by name."""

from __future__ import annotations

import pytest

from sockherd.supervisor.supervisor_state import (
    TRANSITIONS,
    IllegalTransition,
    State,
    SupervisorState,
)
from sockherd.supervisor.worker_exits import ExitFacts, RestartReason, classify_exit
from sockherd.workers.lifecycle import IllegalTransition as IllegalWorkerTransition
from sockherd.workers.lifecycle import WorkerState


def test_a_supervisor_starts_in_starting_and_runs_drains_and_stops():
    state = SupervisorState()
    assert state.current is State.STARTING
    for step in (State.RUNNING, State.RELOADING, State.RUNNING, State.DRAINING, State.STOPPED):
        state.move(step)
        assert state.current is step


@pytest.mark.parametrize(
    "old, new",
    [
        (old, new)
        for old in State
        for new in State
        if new is not old and new not in TRANSITIONS[old]
    ],
)
def test_every_move_the_table_lacks_raises_naming_both_states(old, new):
    state = SupervisorState()
    state.current = old
    with pytest.raises(IllegalTransition, match=f"from {old.name} to {new.name}"):
        state.move(new)
    assert state.current is old


def test_stopped_is_final_and_draining_only_leads_to_stopped():
    assert TRANSITIONS[State.STOPPED] == frozenset()
    assert TRANSITIONS[State.DRAINING] == frozenset({State.STOPPED})


def facts(**changes: object) -> ExitFacts:
    base = {
        "stop_requested": False,
        "last_state": WorkerState.IDLE,
        "timed_out": False,
        "exitcode": -9,
    }
    return ExitFacts(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"stop_requested": True, "last_state": WorkerState.STARTING}, RestartReason.STOPPED),
        ({"last_state": WorkerState.STARTING, "exitcode": 3}, RestartReason.BOOT_FAILURE),
        ({"last_state": WorkerState.BUSY, "timed_out": True}, RestartReason.TIMEOUT),
        ({"last_state": WorkerState.STOPPING, "exitcode": 0}, RestartReason.RECYCLED),
        ({"last_state": WorkerState.STOPPING, "exitcode": 1}, RestartReason.CRASHED),
        ({"last_state": WorkerState.BUSY}, RestartReason.CRASHED),
    ],
)
def test_an_exit_is_classified_by_the_first_matching_row(changes, reason):
    assert classify_exit(facts(**changes)) is reason


def test_a_reaped_workers_slot_stays_dead_with_its_pid_until_it_is_claimed_again():
    from sockherd.workers.scoreboard import Scoreboard

    board = Scoreboard(2)
    try:
        index = board.claim(generation=0)
        assert index == 0 and board.state(0) is WorkerState.STARTING
        board.slots[0].pid = 4242
        board.set_state(0, WorkerState.IDLE)
        board.release(0)
        assert board.state(0) is WorkerState.DEAD and board.slots[0].pid == 4242
        with pytest.raises(IllegalWorkerTransition):
            board.set_state(0, WorkerState.BUSY)  # the dead do not serve
        assert board.claim(generation=1) == 0  # reused: DEAD -> FREE -> STARTING
        assert board.state(0) is WorkerState.STARTING and board.slots[0].generation == 1
    finally:
        board.close()
