"""The pending tasks free to run, in submission order, with throttled batches held back.

Each task has a rank, given once when it is submitted (a restart gives the same ranks, in the
same order). The queue is iterated in rank order however tasks join it: a retried task, or one
whose dependencies just completed, takes its place by rank, not the back of the line, so a
restart (which adds every pending task in rank order) rebuilds the same queue. Tasks joining
in rank order, the common case, cost O(1); one that joins behind a later rank waits in a small
side list that iteration merges in.

A throttled batch (--array RANGE%K) has at most K tasks holding cores or queued: the rest are
parked here, by rank, and admitted one by one as places free. So the scheduler never walks past
the thousands of tasks a throttle keeps waiting.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

#: fold the side list into the main one once it holds this many tasks (and an eighth of the main one)
_FOLD_AT = 64


class RunQueue:
    def __init__(self) -> None:
        #: task ID -> rank, in rank order
        self._main: dict[str, int] = {}
        #: tasks that joined behind a later rank: task ID -> rank
        self._late: dict[str, int] = {}
        self._last_rank = -1
        #: throttled batches: their parked tasks, a heap of (rank, task ID), and how many are queued
        self._parked: dict[str, list[tuple[int, str]]] = {}
        self._parked_ids: dict[str, str] = {}
        self._queued_in: dict[str, int] = {}
        #: batch of each queued task of a throttled batch
        self._batch_of: dict[str, str] = {}

    # ---- reading ----------------------------------------------------------------------------
    def __contains__(self, task_id: str) -> bool:
        return task_id in self._main or task_id in self._late

    def __len__(self) -> int:
        return len(self._main) + len(self._late)

    def __bool__(self) -> bool:
        return bool(self._main or self._late)

    def __iter__(self) -> Iterator[str]:
        """The queued tasks in rank order (not the parked ones)."""
        if not self._late:
            return iter(self._main)
        late = sorted(self._late.items(), key=lambda item: item[1])
        merged = heapq.merge(self._main.items(), late, key=lambda item: item[1])
        return (task_id for task_id, _ in merged)

    def is_parked(self, task_id: str) -> bool:
        return task_id in self._parked_ids

    def parked(self) -> set[str]:
        return set(self._parked_ids)

    def queued_in(self, batch_id: str) -> int:
        """How many tasks of this throttled batch are queued."""
        return self._queued_in.get(batch_id, 0)

    # ---- changes ----------------------------------------------------------------------------
    def add(self, task_id: str, rank: int, batch_id: str = "", throttle: int = 0, running: int = 0) -> None:
        """Queue a task, or park it if its batch's throttle has no place left (`running`: the
        batch's tasks holding cores)."""
        if throttle:
            if self.queued_in(batch_id) + running >= throttle:
                heapq.heappush(self._parked.setdefault(batch_id, []), (rank, task_id))
                self._parked_ids[task_id] = batch_id
                return
            self._queued_in[batch_id] = self.queued_in(batch_id) + 1
            self._batch_of[task_id] = batch_id
        if rank > self._last_rank:
            self._main[task_id] = rank
            self._last_rank = rank
        else:
            self._late[task_id] = rank
            if len(self._late) >= max(_FOLD_AT, len(self._main) // 8):
                self._fold()

    def remove(self, task_id: str) -> None:
        """The task left the queue (placed, or ended without running), or its parking place."""
        if self._main.pop(task_id, None) is None and self._late.pop(task_id, None) is None:
            self._parked_ids.pop(task_id, None)  # its heap entry is skipped when it comes up
            return
        batch_id = self._batch_of.pop(task_id, None)
        if batch_id is not None:
            self._queued_in[batch_id] -= 1
            if not self._queued_in[batch_id]:
                del self._queued_in[batch_id]

    def admit(self, batch_id: str, throttle: int, running: int) -> None:
        """Queue parked tasks of the batch, lowest rank first, while its throttle has places."""
        heap = self._parked.get(batch_id)
        while heap and self.queued_in(batch_id) + running < throttle:
            rank, task_id = heapq.heappop(heap)
            if self._parked_ids.pop(task_id, None) is not None:
                self.add(task_id, rank, batch_id, throttle, running)
        if not heap:
            self._parked.pop(batch_id, None)

    def _fold(self) -> None:
        merged = sorted([*self._main.items(), *self._late.items()], key=lambda item: item[1])
        self._main, self._late = dict(merged), {}
