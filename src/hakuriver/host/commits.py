"""Group commit: the records changed during one event-loop iteration, written in one transaction.

A burst of events costs one SQLite transaction. Whoever is about to tell a client or a runner
something awaits `settled()` first, so nothing anyone was told can be lost by a host crash.
A commit that fails (a full disk) keeps its changes staged and is tried again every
COMMIT_RETRY seconds, and at once whenever someone awaits `settled()`; until it succeeds,
`settled()` raises, so nothing is acknowledged that is not on disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hakuriver.core.cluster import Effect, NodeChanged, TaskChanged
from hakuriver.core.model import Node, Task
from hakuriver.host.store import Store, StoreWriteError

log = logging.getLogger("hakuriver.host")

#: seconds between attempts to commit changes that could not be written (e.g. a full disk)
COMMIT_RETRY = 1.0

#: called after each successful commit with the tasks written and the nodes that have new orders
Committed = Callable[[dict[str, Task], set[str]], None]


class GroupCommit:
    def __init__(self, store: Store, on_committed: Committed) -> None:
        self.store = store
        self.on_committed = on_committed
        #: changed records not yet on disk, by ID
        self.tasks: dict[str, Task] = {}
        self.nodes: dict[str, Node] = {}
        #: nodes whose runners are to be woken for new orders once the changes are on disk
        self.orders: set[str] = set()
        #: why the last commit failed; "" once one succeeds
        self.write_error = ""
        self._retry: asyncio.TimerHandle | None = None
        self._commit: asyncio.Future[None] | None = None

    def stage(self, effects: list[Effect]) -> None:
        """Stage the effects' records; new tasks are not staged (their submission committed them)."""
        for e in effects:
            if isinstance(e, TaskChanged):
                if not e.created:
                    self.tasks[e.task.task_id] = e.task
            elif isinstance(e, NodeChanged):
                self.nodes[e.node.name] = e.node
            else:
                self.orders.add(e.node)
        if effects:
            self._commit_soon()

    async def settled(self) -> None:
        """Return once every change staged so far is committed; raise StoreWriteError if it cannot be."""
        if self._has_staged():
            self._commit_soon()
        if self._commit is not None:
            await asyncio.shield(self._commit)

    def _commit_soon(self) -> None:
        """One commit at the end of this loop iteration, for everything staged until then."""
        if self._commit is None:
            self._commit = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._flush)

    def _has_staged(self) -> bool:
        return bool(self.tasks or self.nodes or self.orders)

    def _flush(self) -> None:
        tasks, nodes, orders = self.tasks, self.nodes, self.orders
        self.tasks, self.nodes, self.orders = {}, {}, set()
        commit, self._commit = self._commit, None
        try:
            self.store.save(changed=tasks.values(), nodes=nodes.values())
        except StoreWriteError as exc:
            self._failed(exc, tasks, nodes, orders, commit)
            return
        if self.write_error:
            log.warning("the database can be written again; %d task changes committed", len(tasks))
            self.write_error = ""
        self.on_committed(tasks, orders)
        if commit is not None:
            commit.set_result(None)

    def _failed(
        self, exc: StoreWriteError, tasks: dict[str, Task], nodes: dict[str, Node], orders: set[str],
        commit: asyncio.Future[None] | None,
    ) -> None:
        """Keep the changes staged; whoever waits for this commit gets the error.

        Nothing is lost: the in-memory records stay as they are, runners get no orders and no
        acknowledgements until the changes are on disk, and they repeat their reports.
        """
        if not self.write_error:
            log.error("%s; retrying every %gs", exc, COMMIT_RETRY)
        self.write_error = str(exc)
        self.tasks = {**tasks, **self.tasks}
        self.nodes = {**nodes, **self.nodes}
        self.orders |= orders
        if commit is not None:
            commit.set_exception(exc)
            commit.exception()  # mark it retrieved: handlers that await it report the error
        if self._retry is None:  # one timer, however many requests' commits failed meanwhile
            self._retry = asyncio.get_running_loop().call_later(COMMIT_RETRY, self._retry_commit)

    def _retry_commit(self) -> None:
        self._retry = None
        if self._has_staged():
            self._commit_soon()
