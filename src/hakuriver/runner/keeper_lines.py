"""The keeper's lines of spawns waiting for busy cores: which cores are in use, who is next on each.

The host may give a node a task for a core that is still busy (docs/design-queued-ahead.md); the
keeper holds such a spawn and starts it the moment its cores free, with no round trip to the
runner. This is that bookkeeping alone, apart from keeper.py so that it does no I/O and reads no
clock (`now` is passed in, on any one clock) and can be checked on its own.

The rule: a spawn that names cores starts once none of them is in use by a started task (one
running, or being killed until its whole tree is gone) and no earlier waiting spawn shares one of
them. So each core serves its spawns first come, first served. A spawn that names no cores (from
a runner of an earlier release) starts at once and is not tracked here.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hakuriver.runner.keeper_wire import Spawn


def _cores_of(spawn: Spawn) -> tuple[int, ...]:
    return tuple(dict.fromkeys(spawn.cores or ()))  # a core named twice is still one core


class CoreLines:
    """Cores in use by started tasks, and one line per core of the spawns waiting for it."""

    def __init__(self) -> None:
        #: core -> the started task using it
        self._user: dict[int, str] = {}
        #: started task -> its cores (released when it ends)
        self._cores: dict[str, tuple[int, ...]] = {}
        #: run key -> waiting spawn, in arrival order
        self._waiting: dict[str, Spawn] = {}
        #: run key of a waiting spawn -> its arrival number (what orders the lines and marks heap entries)
        self._arrival: dict[str, int] = {}
        self._count = 0
        #: core -> run keys of the spawns waiting for it, in arrival order
        self._lines: dict[int, deque[str]] = {}
        #: (withdraw-by time, arrival number, run key), soonest first; entries of spawns gone since are skipped
        self._deadlines: list[tuple[float, int, str]] = []
        #: cores whose line's head may be able to start now (freed, or someone left the line)
        self._freed: set[int] = set()

    @property
    def waiting(self) -> list[str]:
        """Run keys of the waiting spawns, in arrival order."""
        return list(self._waiting)

    def __len__(self) -> int:
        """How many spawns wait."""
        return len(self._waiting)

    def __contains__(self, task_id: str) -> bool:
        """Whether that spawn waits here."""
        return task_id in self._waiting

    def in_use(self) -> dict[int, str]:
        """Core -> the started task using it (a copy)."""
        return dict(self._user)

    def add(self, spawn: Spawn, now: float) -> bool:
        """A new spawn (its run key neither started nor waiting here): True if it may start now
        (its cores are then in use by it), False if it waits."""
        if spawn.cores is None:
            return True
        cores = _cores_of(spawn)
        if not any(c in self._user or c in self._lines for c in cores):
            self._take(spawn.task_id, cores)
            return True
        self._count += 1
        self._waiting[spawn.task_id] = spawn
        self._arrival[spawn.task_id] = self._count
        for core in cores:
            self._lines.setdefault(core, deque()).append(spawn.task_id)
        if spawn.wait_limit is not None:
            heapq.heappush(self._deadlines, (now + spawn.wait_limit, self._count, spawn.task_id))
        return False

    def released(self, task_id: str) -> list[Spawn]:
        """That task has ended (or could not start): its cores are free. The spawns that may start
        now, in arrival order (their cores are then in use by them)."""
        for core in self._cores.pop(task_id, ()):
            if self._user.get(core) == task_id:
                del self._user[core]
                self._freed.add(core)
        return self.ready()

    def withdraw_due(self, now: float) -> list[Spawn]:
        """The waiting spawns whose wait limit has run out by `now`, taken out of their lines.
        Call `ready` after: a spawn behind one of them may start now."""
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, arrival, task_id = heapq.heappop(self._deadlines)
            if self._arrival.get(task_id) == arrival:
                due.append(self._leave(task_id))
        return due

    def drop(self, task_id: str) -> Spawn | None:
        """Take that waiting spawn out of its lines (killed before it started); None if it does not
        wait here. Call `ready` after: a spawn behind it may start now."""
        if task_id not in self._waiting:
            return None
        return self._leave(task_id)

    def next_deadline(self) -> float | None:
        """When the next waiting spawn is due to be withdrawn; None if none has a wait limit."""
        while self._deadlines and self._arrival.get(self._deadlines[0][2]) != self._deadlines[0][1]:
            heapq.heappop(self._deadlines)  # started or left the line since
        return self._deadlines[0][0] if self._deadlines else None

    def ready(self) -> list[Spawn]:
        """The waiting spawns that may start now, in arrival order (their cores are then in use by
        them). Only the heads of lines that changed are looked at: a spawn anywhere else waits for
        a core in use or for an earlier spawn, as it did before."""
        heads = {self._lines[c][0] for c in self._freed if c in self._lines and c not in self._user}
        self._freed.clear()
        started = []
        for task_id in sorted(heads, key=self._arrival.__getitem__):
            cores = _cores_of(self._waiting[task_id])
            if all(c not in self._user and self._lines[c][0] == task_id for c in cores):
                started.append(self._leave(task_id))
                self._take(task_id, cores)
        # (starting one cannot unblock another: the cores it frees in its lines are its own now)
        self._freed.clear()
        return started

    def _take(self, task_id: str, cores: tuple[int, ...]) -> None:
        for core in cores:
            self._user[core] = task_id
        self._cores[task_id] = cores

    def _leave(self, task_id: str) -> Spawn:
        spawn = self._waiting.pop(task_id)
        del self._arrival[task_id]
        for core in _cores_of(spawn):
            line = self._lines[core]
            line.remove(task_id)  # usually its head; a line holds at most ahead.DEPTH spawns
            if not line:
                del self._lines[core]
            self._freed.add(core)
        return spawn
