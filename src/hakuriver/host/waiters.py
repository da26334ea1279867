"""Who waits for a task to end or a batch to finish, woken once the change is committed.

Each batch's tasks that are not yet final (lost counts as final) are kept here too: they
answer whether a batch is done, and which of its tasks a batch kill is for.
"""

from __future__ import annotations

import asyncio
import contextlib

from hakuriver.core.model import Task


class Waiters:
    def __init__(self) -> None:
        self._tasks: dict[str, list[asyncio.Future[None]]] = {}
        #: per batch, its tasks not yet final (lost counts as final), to answer batch waits
        self._open: dict[str, set[str]] = {}
        self._batches: dict[str, list[asyncio.Future[None]]] = {}

    def committed(self, tasks: dict[str, Task]) -> None:
        """Wake who waits for these tasks, or for their batches, now that they are on disk."""
        for task in tasks.values():
            if task.state.is_final:
                _wake(self._tasks.pop(task.task_id, []))
            if task.batch_id:
                self.track(task)

    def track(self, task: Task) -> None:
        """Count a task of a batch as open or done; the batch's waiters wake when its last ends."""
        open_ids = self._open.setdefault(task.batch_id, set())
        if not task.state.is_final:
            open_ids.add(task.task_id)
            return
        open_ids.discard(task.task_id)
        if not open_ids:
            del self._open[task.batch_id]
            _wake(self._batches.pop(task.batch_id, []))

    def open_batch(self, batch_id: str, task_ids: set[str]) -> None:
        self._open[batch_id] = task_ids

    def is_open(self, batch_id: str) -> bool:
        return batch_id in self._open

    def unfinished(self, batch_id: str) -> list[str]:
        """The batch's tasks not yet final, sorted."""
        return sorted(self._open.get(batch_id, ()))

    async def task_final(self, task_id: str, timeout: float) -> None:
        """Return once the task's final record is committed, or when `timeout` runs out."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await _wait_or_timeout(self._tasks, task_id, fut, timeout)

    async def batch_done(self, batch_id: str, timeout: float) -> None:
        """Return once every task of the batch is final, or when `timeout` runs out."""
        if batch_id in self._open:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await _wait_or_timeout(self._batches, batch_id, fut, timeout)


async def _wait_or_timeout(
    waiters: dict[str, list[asyncio.Future[None]]], key: str, fut: asyncio.Future[None], timeout: float
) -> None:
    waiters.setdefault(key, []).append(fut)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fut, timeout)
    pending = waiters.get(key)
    if pending is not None and fut in pending:  # timed out: do not keep it until the key is woken
        pending.remove(fut)
        if not pending:
            del waiters[key]


def _wake(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)
