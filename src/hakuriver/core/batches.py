"""How each active batch stands for --after: how many of its tasks have yet to complete, and which
ended otherwise. A batch completes when its last task completes, and fails at its first task that
ends any other way (lost too: it may never come back, and its waiters are not kept waiting)."""

from __future__ import annotations

from hakuriver.core.model import Task
from hakuriver.core.states import TaskState


class BatchOutcomes:
    def __init__(self) -> None:
        #: per batch, its tasks that have not completed (and did not end otherwise)
        self.left: dict[str, int] = {}
        #: per batch still in `left`, its tasks that ended other than completed, and how (they
        #: fail any later --after of the batch, whatever the store has committed yet)
        self.problems: dict[str, dict[str, TaskState]] = {}

    def add(self, task: Task) -> None:
        """An active task (submitted, or restored after a restart)."""
        if task.batch_id and task.state is not TaskState.COMPLETED:
            self.left[task.batch_id] = self.left.get(task.batch_id, 0) + 1

    def active(self, batch_id: str) -> bool:
        return bool(self.left.get(batch_id))

    def problem(self, batch_id: str) -> TaskState | None:
        """How the first of its tasks that did not complete ended; None if none so far."""
        return next(iter(self.problems.get(batch_id, {}).values()), None)

    def lost_is_back(self, task: Task) -> None:
        """A lost task runs again (its node is back with it, or it is queued again): no longer a
        problem of its batch (waiters that failed because of it stay failed)."""
        problems = self.problems.get(task.batch_id)
        if problems is not None and problems.pop(task.task_id, None) is not None and not problems:
            del self.problems[task.batch_id]

    def ended(self, task: Task, state: TaskState) -> TaskState | None:
        """The task ended in `state`: the outcome of its batch if this decides it, else None."""
        batch_id = task.batch_id
        if batch_id not in self.left:
            return None
        self.lost_is_back(task)  # a lost task that now ends for real: its new state counts instead
        decided = None
        if state is not TaskState.COMPLETED:
            if batch_id not in self.problems:
                decided = state
            self.problems.setdefault(batch_id, {})[task.task_id] = state
        if state is not TaskState.LOST:  # a lost task may still complete: it stays counted
            self.left[batch_id] -= 1
            if not self.left[batch_id]:
                del self.left[batch_id]
                if self.problems.pop(batch_id, None) is None:
                    decided = TaskState.COMPLETED
        return decided
