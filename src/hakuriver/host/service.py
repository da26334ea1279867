"""The host's imperative shell: apply an event to the core, commit, reply, wake who waits.

Everything runs on the one asyncio event loop thread, so events are applied one at a time
without locks (one writer). Scheduling is coalesced: any number of events in one loop
iteration cost one planning pass (see `scheduling`).

`HostService` answers the clients' requests and composes the other parts of the shell:
finding tasks and batches by ID (`lookup`), who waits for them (`waiters`), the runners'
heartbeats and reports (`runners`), and the group commit (`commits`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from hakuriver import protocol as p
from hakuriver.core.cluster import Cluster, Effect, SubmitRefused, UnknownTask
from hakuriver.core.model import Node, Task
from hakuriver.core.states import PROBLEM_STATES, TaskState
from hakuriver.host import convert
from hakuriver.host.commits import GroupCommit
from hakuriver.host.live import Live
from hakuriver.host.lookup import AmbiguousId, Lookup, NotFound
from hakuriver.host.metrics import Metrics
from hakuriver.host.runners import Runners
from hakuriver.host.scheduling import Scheduler
from hakuriver.host.store import Store, StoreWriteError, TaskFilter
from hakuriver.host.waiters import Waiters

__all__ = ["BATCH_PROBLEMS_SHOWN", "SCAN_PAGE", "AmbiguousId", "HostService", "KillRefused", "NotFound"]

log = logging.getLogger("hakuriver.host")


class KillRefused(Exception):
    pass


#: how many of a batch's problem tasks its view names
BATCH_PROBLEMS_SHOWN = 20
#: tasks per page when a whole list is streamed
SCAN_PAGE = 1000


class HostService:
    def __init__(self, cluster: Cluster, store: Store, clock: Callable[[], float] = time.time,
                 default_time_limit: float | None = None) -> None:
        self.cluster = cluster
        self.store = store
        self.clock = clock
        #: [tasks] default_time_limit, for tasks submitted without one
        self.default_time_limit = default_time_limit
        self.commits = GroupCommit(store, self._committed)
        self.lookup = Lookup(cluster, self.commits, store)
        self.waiters = Waiters()
        self.scheduler = Scheduler(cluster, self.commits)
        #: the dashboard's events and the Prometheus metrics, both fed by what is committed
        self.live = Live(cluster, self.view, clock)
        self.metrics = Metrics(cluster, store.state_counts)
        self.runners = Runners(cluster, store, self.commits, self.scheduler, self.metrics, clock)

    def restore(self) -> None:
        tasks = self.store.active_tasks()
        active = {t.task_id for t in tasks}
        deps = {d for t in tasks if t.state is TaskState.PENDING for d in t.after if d not in active}
        outcomes = {d: state for d in deps if (state := self.lookup.ended_as(d)) is not None}
        self._apply(self.cluster.restore(self.store.nodes(), tasks, self.clock(), outcomes))
        for task in self.cluster.tasks.values():
            if task.batch_id and not task.state.is_final:
                self.waiters.track(task)
        log.info("restored %d nodes and %d active tasks", len(self.cluster.nodes), len(self.cluster.tasks))

    # ---- effects -------------------------------------------------------------------------
    def _apply(self, effects: list[Effect]) -> None:
        """Stage the changed records; runners and waiters are woken once they are committed."""
        self.commits.stage(effects)

    async def settled(self) -> None:
        await self.commits.settled()

    def _committed(self, tasks: dict[str, Task], orders: set[str]) -> None:
        self.live.committed(tasks)
        self.metrics.committed(tasks)
        self.runners.wake(orders)
        self.waiters.committed(tasks)

    def request_schedule(self) -> None:
        self.scheduler.request()

    # ---- finding tasks and batches (see `lookup`) ----------------------------------------
    def resolve_task(self, some_id: str, must_exist: bool = False) -> str:
        """The full task ID for a full ID or a unique prefix of one."""
        return self.lookup.resolve_task(some_id, must_exist)

    def resolve_batch(self, some_id: str, must_exist: bool = False) -> str:
        return self.lookup.resolve_batch(some_id, must_exist)

    def owner_of(self, some_id: str, kinds: tuple[str, ...]) -> tuple[str, str, str]:
        """(kind, full ID, owner) of the task or batch `some_id` names, looked for as each of `kinds` in turn."""
        return self.lookup.owner_of(some_id, kinds)

    def get_task(self, task_id: str) -> Task:
        return self.lookup.get_task(task_id)

    # ---- client requests -----------------------------------------------------------------
    async def submit(self, specs: list[p.TaskSpec], batch: bool = False, owner: str = "") -> tuple[list[str], str]:
        """Queue the tasks; their IDs are returned only after the records are committed.

        The new records are written before the cluster sees them: if the disk refuses them,
        nothing was queued and the caller gets the StoreWriteError.
        """
        outcomes: dict[str, TaskState] = {}
        if any(spec.after for spec in specs):
            specs, outcomes = await self._dependencies(specs)
        now = self.clock()
        batch_id = convert.new_ids(1)[0] if batch or len(specs) > 1 else ""
        tasks = convert.tasks_from_specs(specs, now, batch_id, owner)
        if self.default_time_limit is not None:
            for task in tasks:
                if task.time_limit is None:
                    task.time_limit = self.default_time_limit
        self.cluster.check_submit(tasks, outcomes)
        try:
            self.store.insert(tasks)
        except StoreWriteError as exc:
            log.error("refused a submission of %d tasks: %s", len(tasks), exc)
            raise
        self._apply(self.cluster.on_submit(tasks, now, outcomes))
        self.metrics.submitted.inc(len(tasks))
        self.live.committed({t.task_id: t for t in tasks})  # written by the insert above
        if batch_id:
            self.waiters.open_batch(batch_id, {t.task_id for t in tasks})
        self.request_schedule()
        return [t.task_id for t in tasks], batch_id

    async def _dependencies(self, specs: list[p.TaskSpec]) -> tuple[list[p.TaskSpec], dict[str, TaskState]]:
        """The specs with their --after IDs in full, and how those that are no longer active ended.

        Everything after `settled()` runs without a pause, so no dependency can end between
        this look at the store and the cluster's decision.
        """
        await self.settled()
        full: dict[str, str] = {}
        for some_id in {d for spec in specs for d in spec.after}:
            try:
                full[some_id] = self.resolve_task(some_id, must_exist=True)
            except NotFound:
                try:
                    full[some_id] = self.resolve_batch(some_id, must_exist=True)
                except NotFound:
                    raise SubmitRefused(f"--after: no task or batch with ID {some_id}") from None
        specs = [spec.replace(after=sorted({full[d] for d in spec.after})) if spec.after else spec for spec in specs]
        outcomes = {d: state for d in set(full.values()) if (state := self.lookup.ended_as(d)) is not None}
        return specs, outcomes

    async def retry_failed(self, some_id: str, requester: str) -> tuple[list[str], str]:
        """Submit again, as one new batch, every task of a task or batch that did not complete.

        The new tasks keep their owner (an admin retrying a user's batch does not make them the
        admin's, which would change the Unix user they run as); `requester` owns them only if
        the originals have no recorded owner. A lost one it resubmits is marked killed, so that
        it cannot also come back to life when its node returns (the new batch runs its work)."""
        await self.settled()  # what the store reads below includes every change made so far
        try:
            tasks = [self.get_task(self.resolve_task(some_id))]
            kind = "task"
        except NotFound:
            try:
                batch_id = self.resolve_batch(some_id)
            except NotFound:
                raise NotFound("task or batch", some_id) from None
            stored = await self.batch_tasks(batch_id)
            tasks = [self.cluster.tasks.get(t.task_id) or self.commits.tasks.get(t.task_id) or t for t in stored]
            kind = "batch"
        retried = [t for t in tasks if t.state in PROBLEM_STATES]
        if not retried:
            states = ", ".join(sorted({t.state.value for t in tasks}))
            raise KillRefused(f"{kind} {some_id} has no failed, killed, lost or timed-out task to retry ({states})")
        owner = retried[0].owner or requester  # a batch has one owner: one request submitted it
        reply = await self.submit([convert.spec_of(t) for t in retried], batch=True, owner=owner)
        now = self.clock()
        for task in retried:
            if task.state is TaskState.LOST and task.task_id in self.cluster.tasks:
                self._apply(self.cluster.on_kill(task.task_id, now))
        return reply

    def view(self, task: Task) -> p.TaskView:
        return convert.task_view(task, self.cluster.why_pending(task.task_id))

    async def list_tasks(self, where: TaskFilter, limit: int, offset: int) -> tuple[list[Task], int, bool]:
        """A page of matching tasks, newest first, and the number matching; read off the event loop."""
        return await asyncio.to_thread(self.store.list_tasks, where, limit, offset)

    async def count_tasks(self, where: TaskFilter) -> tuple[int, bool]:
        return await asyncio.to_thread(self.store.count_tasks, where)

    async def task_pages(self, where: TaskFilter, limit: int, offset: int) -> AsyncIterator[list[Task]]:
        """Every matching task (at most `limit`; 0 = no limit), newest first, SCAN_PAGE at a time off the loop."""
        cursor: int | None = None
        left = limit or None
        while left is None or left > 0:
            size = SCAN_PAGE if left is None else min(SCAN_PAGE, left)
            tasks, cursor = await asyncio.to_thread(self.store.page_of_tasks, where, size, offset, cursor)
            offset = 0  # skipped by the first page; the cursor carries on from there
            if tasks:
                yield tasks
            if len(tasks) < size:
                return
            if left is not None:
                left -= len(tasks)

    async def batch_tasks(self, batch_id: str) -> list[Task]:
        tasks = await asyncio.to_thread(self.store.batch_tasks, batch_id)
        if not tasks:
            raise NotFound("batch", batch_id)
        return tasks

    async def batch_view(self, batch_id: str) -> p.BatchView:
        """Counts by state and the first problems, read off the loop (a batch may hold 100,000 tasks)."""
        done = not self.waiters.is_open(batch_id)  # before the read: a batch done now is done in what it reads
        counts, problems = await asyncio.to_thread(self.store.batch_summary, batch_id, BATCH_PROBLEMS_SHOWN)
        if not counts:
            raise NotFound("batch", batch_id)
        return p.BatchView(batch_id, sum(counts.values()), counts, done, [p.TaskBrief(*row) for row in problems])

    async def wait_batch(self, batch_id: str, timeout: float) -> p.BatchView:
        """The batch once every task is final, or as it is when `timeout` runs out."""
        await self.waiters.batch_done(batch_id, timeout)
        return await self.batch_view(batch_id)

    def kill_batch(self, batch_id: str) -> tuple[str, str]:
        """The batch's state after the request ("killed" once every task has ended, else "running"
        while any of them is still being ended, started or not), and a message saying what was asked."""
        if not self.waiters.is_open(batch_id) and not self.store.batch_ids_with_prefix(batch_id, 1):
            raise NotFound("batch", batch_id)
        # the batch's tasks the cluster still holds: the waiters learn of an end only once it is
        # committed, and one that ended since (its commit still to come) has nothing left to kill
        ids = [task_id for task_id in self.waiters.unfinished(batch_id) if task_id in self.cluster.tasks]
        ids += [t.task_id for t in self.cluster.tasks.values() if t.batch_id == batch_id and t.state.is_final]
        effects: list[Effect] = []
        for task_id in ids:
            if task_id in self.cluster.tasks:  # (a kill before it may have ended it, as a dependent)
                effects += self.cluster.on_kill(task_id, self.clock())
        self._apply(effects)
        if not ids:
            raise KillRefused(f"every task of batch {batch_id} has already finished; nothing to kill")
        ending = any((t := self.cluster.tasks.get(task_id)) is not None and not t.state.is_final for task_id in ids)
        state = TaskState.RUNNING.value if ending else TaskState.KILLED.value
        return state, f"kill requested for {len(ids)} unfinished tasks of batch {batch_id}"

    async def wait_task(self, task_id: str, timeout: float) -> Task:
        """The task once it is final, or as it is when `timeout` runs out."""
        task = self.get_task(task_id)
        if task.state.is_final:
            return task
        await self.waiters.task_final(task_id, timeout)
        return self.get_task(task_id)

    def kill(self, task_id: str) -> tuple[Task, str]:
        try:
            effects = self.cluster.on_kill(task_id, self.clock())
        except UnknownTask:
            task = self.get_task(task_id)
            raise KillRefused(f"task {task_id} has already finished ({task.state.value}); nothing to kill") from None
        self._apply(effects)
        task = self.get_task(task_id)
        if task.state.is_final:
            return task, f"task {task_id} killed"
        return task, f"kill requested for task {task_id}; its runner is ending the process tree"

    def nodes(self) -> list[Node]:
        return sorted(self.cluster.nodes.values(), key=lambda n: n.name)

    # ---- runner requests and periodic work (see `runners`) -------------------------------
    async def heartbeat(self, hb: p.Heartbeat) -> p.Orders:
        """Record the heartbeat; answer with orders, holding the request open until some exist."""
        return await self.runners.heartbeat(hb)

    def report(self, r: p.Report) -> p.Ack:
        return self.runners.report(r)

    async def watch_heartbeats(self, interval: float) -> None:
        await self.runners.watch_heartbeats(interval)
