"""A task's attempts: closing the current one into its history, and late news of old ones.

Attempt N of a task writes `<id>.out` and `<id>.err`; when attempt N+1 is launched, its runner
first moves them aside as `<id>.N.out` and `<id>.N.err` (`numbered_output`), so the latest
attempt's output is always where it was before retries existed and every earlier one is kept.
"""

from __future__ import annotations

from hakuriver.core.events import Finished
from hakuriver.core.model import Attempt, Task
from hakuriver.core.states import TaskState


def numbered_output(path: str, attempt: int) -> str:
    """Where attempt `attempt`'s output file `path` (<id>.out) is kept once a later attempt runs."""
    if not path:
        return ""
    stem, dot, ext = path.rpartition(".")
    return f"{stem}.{attempt}.{ext}" if dot else f"{path}.{attempt}"


def earlier_output(task: Task) -> int:
    """The latest earlier attempt that reached its node, whose output <id>.out holds; 0 = none."""
    return next((a.attempt for a in reversed(task.attempts) if a.delivered), 0)


def close_attempt(task: Task, state: TaskState, now: float, error: str, delivered: bool = True) -> None:
    """Record the current attempt as ended in `state`, and make the task a fresh pending attempt."""
    task.attempts.append(Attempt(
        attempt=task.attempt, state=state, node=task.node, core_ids=task.core_ids, started_at=task.started_at,
        finished_at=now, exit_code=task.exit_code, signal=task.signal, error=error,
        stdout_path=numbered_output(task.stdout_path, task.attempt),
        stderr_path=numbered_output(task.stderr_path, task.attempt), delivered=delivered, unix_user=task.unix_user,
    ))
    task.attempt += 1
    task.state = TaskState.PENDING
    task.node, task.core_ids = "", ()
    task.exit_code = task.signal = task.started_at = task.finished_at = None
    task.error = task.stdout_path = task.stderr_path = task.unix_user = ""
    task.cpu_user_seconds = task.cpu_system_seconds = task.max_rss_bytes = None


def note_late(task: Task, event: Finished, state: TaskState) -> bool:
    """An earlier attempt's real outcome arrived (its node was unreachable): history only.

    False if the task has no such earlier attempt, or if it already shows this outcome (the runner
    sent it again, its acknowledgement lost), or if the attempt was handed back unrun (queued
    ahead, it never started: its history already says it did not run there): nothing to record.
    """
    if event.returned:
        return False
    for old in task.attempts:
        if old.attempt == event.attempt:
            if (old.state, old.finished_at, old.exit_code, old.signal) == (state, event.finished_at, event.exit_code, event.signal):
                return False
            old.state, old.finished_at = state, event.finished_at
            old.exit_code, old.signal = event.exit_code, event.signal
            old.error = f"{old.error}; then {event.error or state.value}" if old.error else event.error
            return True
    return False
