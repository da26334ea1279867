from __future__ import annotations

import pytest

from hakuriver.core.states import FINAL_STATES, TRANSITIONS, IllegalTransition, TaskState, check_transition

T = TaskState

LEGAL = [
    # a pending task that never runs: killed, or a dependency did not complete
    (T.PENDING, T.ASSIGNING), (T.PENDING, T.KILLED), (T.PENDING, T.FAILED),
    (T.ASSIGNING, T.RUNNING), (T.ASSIGNING, T.COMPLETED), (T.ASSIGNING, T.FAILED), (T.ASSIGNING, T.KILLED),
    (T.ASSIGNING, T.LOST), (T.ASSIGNING, T.TIMEOUT),
    (T.RUNNING, T.COMPLETED), (T.RUNNING, T.FAILED), (T.RUNNING, T.KILLED), (T.RUNNING, T.LOST),
    (T.RUNNING, T.TIMEOUT),
    # an attempt that ended failed, timeout or lost, with retries left: back to the queue
    (T.ASSIGNING, T.PENDING), (T.RUNNING, T.PENDING),
    (T.LOST, T.RUNNING), (T.LOST, T.COMPLETED), (T.LOST, T.FAILED), (T.LOST, T.KILLED), (T.LOST, T.TIMEOUT),
    # a lost task that never started there, its node back without it: queued again
    (T.LOST, T.PENDING),
]


@pytest.mark.parametrize("old, new", LEGAL)
def test_every_legal_edge(old, new):
    check_transition(old, new)


@pytest.mark.parametrize("old, new", [(o, n) for o in T for n in T if (o, n) not in LEGAL])
def test_every_other_edge_is_illegal(old, new):
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_final_states_never_change_except_lost():
    for state in FINAL_STATES - {T.LOST}:
        assert TRANSITIONS[state] == frozenset()
    assert T.LOST.is_final and TRANSITIONS[T.LOST]


def test_only_assigning_and_running_hold_cores():
    assert {s for s in T if s.holds_cores} == {T.ASSIGNING, T.RUNNING}
