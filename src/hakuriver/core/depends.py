"""Which pending tasks wait on which tasks and batches (--after): a two-way index, no policy.

`Cluster` decides what a dependency's end means; this only remembers who waits on what, so
that both "what does this task wait for" and "who waits on this ID" are O(1).
"""

from __future__ import annotations

from collections.abc import Iterable


class Dependencies:
    def __init__(self) -> None:
        #: task ID -> the task and batch IDs it still waits for
        self.waiting: dict[str, set[str]] = {}
        #: task or batch ID -> the tasks waiting for it
        self.dependents: dict[str, set[str]] = {}

    def __contains__(self, task_id: str) -> bool:
        return task_id in self.waiting

    def add(self, task_id: str, deps: Iterable[str]) -> None:
        deps = set(deps)
        self.waiting[task_id] = deps
        for dep in deps:
            self.dependents.setdefault(dep, set()).add(task_id)

    def drop(self, task_id: str) -> None:
        """The task no longer waits (it was killed, or failed without running)."""
        for dep in self.waiting.pop(task_id, ()):
            waiters = self.dependents.get(dep)
            if waiters is not None:
                waiters.discard(task_id)
                if not waiters:
                    del self.dependents[dep]

    def completed(self, dep: str) -> list[str]:
        """`dep` completed: the tasks that now wait for nothing more, in ID order."""
        ready = []
        for task_id in sorted(self.dependents.pop(dep, ())):
            left = self.waiting[task_id]
            left.discard(dep)
            if not left:
                del self.waiting[task_id]
                ready.append(task_id)
        return ready

    def ended_badly(self, dep: str) -> list[str]:
        """`dep` ended other than completed: its waiting tasks, no longer waiting for anything."""
        doomed = sorted(self.dependents.pop(dep, ()))
        for task_id in doomed:
            self.drop(task_id)
        return doomed

    def first_unmet(self, task_id: str) -> tuple[str, int]:
        """One ID the task waits for (the smallest, for a stable message) and how many in all."""
        deps = self.waiting.get(task_id, set())
        return (min(deps) if deps else ""), len(deps)
