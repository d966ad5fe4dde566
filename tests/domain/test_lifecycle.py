import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskplane.domain.lifecycle import TRANSITIONS, can_transition, check_transition, refusal
from taskplane.domain.task import TERMINAL_STATES, TaskState
from taskplane.errors import InvalidTransitionError

from .builders import task


def test_happy_path_is_allowed():
    path = [TaskState.PENDING, TaskState.ADMITTED, TaskState.STARTING, TaskState.RUNNING, TaskState.SUCCEEDED]
    for current, target in itertools.pairwise(path):
        assert can_transition(task().state(current).build(), target)


@given(st.sampled_from(sorted(TERMINAL_STATES)), st.sampled_from(list(TaskState)))
def test_terminal_states_are_final(terminal, target):
    t = task().state(terminal).build()
    assert not can_transition(t, target)
    assert refusal(t, target).startswith("terminal_is_final")


@pytest.mark.parametrize("target", [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.PENDING])
def test_cancelling_only_ends_cancelled(target):
    t = task().state(TaskState.CANCELLING).build()
    assert refusal(t, target).startswith("cancel_requested_ends_cancelled")
    assert can_transition(t, TaskState.CANCELLED)


def test_pending_cannot_jump_to_running():
    with pytest.raises(InvalidTransitionError) as err:
        check_transition(task().state(TaskState.PENDING).build(), TaskState.RUNNING)
    assert err.value.extra["state"] == "pending"


def test_every_state_has_a_row():
    assert set(TRANSITIONS) == set(TaskState)
    assert all(not TRANSITIONS[s] for s in TERMINAL_STATES)
