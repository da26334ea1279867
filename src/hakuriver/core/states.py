"""The task lifecycle of SPEC §3 as one table, and the two node states."""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):
    #: queued on the host, waiting for free cores
    PENDING = "pending"
    #: placed on a node with exact core IDs; the runner has not yet said it started
    ASSIGNING = "assigning"
    #: the runner started the process
    RUNNING = "running"
    #: exited with code 0
    COMPLETED = "completed"
    #: non-zero exit, a signal it did not ask for, or could not start (the error says why)
    FAILED = "failed"
    #: ended at the user's request
    KILLED = "killed"
    #: its node stopped answering; may still change to the real outcome when the node returns
    LOST = "lost"
    #: still running when its time limit ran out: ended by the node (SIGTERM, then SIGKILL)
    TIMEOUT = "timeout"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def holds_cores(self) -> bool:
        """Whether a task in this state owns core IDs on its node."""
        return self in (TaskState.ASSIGNING, TaskState.RUNNING)


class NodeState(str, Enum):
    #: heartbeating within the timeout; receives work
    ONLINE = "online"
    #: silent for longer than the heartbeat timeout; receives nothing
    OFFLINE = "offline"


FINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.KILLED, TaskState.LOST, TaskState.TIMEOUT})
#: the final states of a task that did not complete: what a batch's view lists as its problems
PROBLEM_STATES = FINAL_STATES - {TaskState.COMPLETED}

#: the outcomes of an attempt after which a task with retries left goes back to the queue
RETRIED_STATES = frozenset({TaskState.FAILED, TaskState.TIMEOUT, TaskState.LOST})

_T = TaskState
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # a pending task that never runs: killed, or failed because a dependency did not complete
    _T.PENDING: frozenset({_T.ASSIGNING, _T.KILLED, _T.FAILED}),
    # -> pending: the attempt ended failed, timeout or lost and the task has retries left
    _T.ASSIGNING: frozenset({_T.RUNNING, _T.COMPLETED, _T.FAILED, _T.KILLED, _T.LOST, _T.TIMEOUT, _T.PENDING}),
    _T.RUNNING: frozenset({_T.COMPLETED, _T.FAILED, _T.KILLED, _T.LOST, _T.TIMEOUT, _T.PENDING}),
    _T.COMPLETED: frozenset(),
    _T.FAILED: frozenset(),
    _T.KILLED: frozenset(),
    _T.TIMEOUT: frozenset(),
    # A node that comes back tells the real outcome of what it was running; -> pending: it
    # came back without the task, which had never started there (the launch never arrived)
    _T.LOST: frozenset({_T.RUNNING, _T.COMPLETED, _T.FAILED, _T.KILLED, _T.TIMEOUT, _T.PENDING}),
}


class IllegalTransition(Exception):
    """A state change the lifecycle does not allow; always a bug in the caller."""


def check_transition(old: TaskState, new: TaskState) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"task state {old.value} cannot become {new.value}")
