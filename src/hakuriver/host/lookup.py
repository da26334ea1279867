"""Finding a task or batch: a full ID or a unique prefix of one, and the latest record of it.

A task's latest record is in the cluster while it is active, then among the staged changes
until they are committed, then in the store.
"""

from __future__ import annotations

from hakuriver import protocol as p
from hakuriver.core.cluster import Cluster
from hakuriver.core.model import Task
from hakuriver.core.states import PROBLEM_STATES, TaskState
from hakuriver.host.commits import GroupCommit
from hakuriver.host.store import Store


class NotFound(Exception):
    """No task or batch has this ID; the message says which was looked for."""

    def __init__(self, kind: str, some_id: str) -> None:
        super().__init__(f"no {kind} with ID {some_id}")


class AmbiguousId(Exception):
    """A short ID that matches more than one task or batch; the message lists some."""


#: how many matches of an ambiguous short ID the error lists
MATCHES_SHOWN = 5


class Lookup:
    def __init__(self, cluster: Cluster, commits: GroupCommit, store: Store) -> None:
        self.cluster = cluster
        self.commits = commits
        self.store = store

    def resolve_task(self, some_id: str, must_exist: bool = False) -> str:
        """The full task ID for a full ID or a unique prefix of one."""
        some_id = some_id.lower()
        if p.is_task_id(some_id) and not must_exist:
            return some_id
        return _unique(some_id, self.store.task_ids_with_prefix(some_id, MATCHES_SHOWN + 1), "task")

    def resolve_batch(self, some_id: str, must_exist: bool = False) -> str:
        some_id = some_id.lower()
        if p.is_task_id(some_id) and not must_exist:
            return some_id
        return _unique(some_id, self.store.batch_ids_with_prefix(some_id, MATCHES_SHOWN + 1), "batch")

    def owner_of(self, some_id: str, kinds: tuple[str, ...]) -> tuple[str, str, str]:
        """(kind, full ID, owner) of the task or batch `some_id` names, looked for as each of `kinds` in turn."""
        for kind in kinds:
            try:
                if kind == "task":
                    task = self.get_task(self.resolve_task(some_id))
                    return kind, task.task_id, task.owner
                batch_id = self.resolve_batch(some_id)
                owner = self.store.batch_owner(batch_id)
                if owner is not None:
                    return kind, batch_id, owner
                raise NotFound("batch", batch_id)
            except NotFound:
                if kind == kinds[-1]:
                    raise
        raise AssertionError("no kinds given")

    def get_task(self, task_id: str) -> Task:
        task = self.cluster.tasks.get(task_id) or self.commits.tasks.get(task_id) or self.store.get_task(task_id)
        if task is None:
            raise NotFound("task", task_id)
        return task

    def ended_as(self, some_id: str) -> TaskState | None:
        """How a task, or a batch (completed, or a problem of it), has ended as far as the store
        and staged changes know; None while it is active, or unknown."""
        if some_id in self.cluster.tasks:
            return None
        task = self.commits.tasks.get(some_id) or self.store.get_task(some_id)
        if task is not None:
            return task.state
        counts, _ = self.store.batch_summary(some_id, 0)
        if not counts:
            return None
        problem = next((TaskState(s) for s in counts if TaskState(s) in PROBLEM_STATES), None)
        return problem or TaskState.COMPLETED


def _unique(prefix: str, matches: list[str], kind: str) -> str:
    if not matches:
        raise NotFound(kind, prefix)
    if len(matches) > 1:
        shown = ", ".join(matches[:MATCHES_SHOWN]) + (", ..." if len(matches) > MATCHES_SHOWN else "")
        raise AmbiguousId(f"the short ID {prefix} matches more than one {kind}: {shown}; give more characters")
    return matches[0]
