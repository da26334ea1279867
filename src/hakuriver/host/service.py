"""The host's imperative shell: apply an event to the core, commit, reply, wake who waits.

Everything runs on the one asyncio event loop thread, so events are applied one at a time
without locks (one writer). Scheduling is coalesced: any number of events in one loop
iteration cost one planning pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from hakuriver import protocol as p
from hakuriver.core.attempts import note_late
from hakuriver.core.cluster import Cluster, Effect, NodeChanged, NodeReport, SubmitRefused, TaskChanged, UnknownTask
from hakuriver.core.cluster import Finished as FinishedEvent
from hakuriver.core.cluster import Orders as CoreOrders
from hakuriver.core.model import Node, Task, run_key, split_run_key
from hakuriver.core.states import PROBLEM_STATES, TaskState
from hakuriver.host import convert
from hakuriver.host.commits import GroupCommit
from hakuriver.host.live import Live
from hakuriver.host.metrics import Metrics
from hakuriver.host.store import Store, StoreWriteError, TaskFilter

log = logging.getLogger("hakuriver.host")


class NotFound(Exception):
    """No task or batch has this ID; the message says which was looked for."""

    def __init__(self, kind: str, some_id: str) -> None:
        super().__init__(f"no {kind} with ID {some_id}")


class KillRefused(Exception):
    pass


class AmbiguousId(Exception):
    """A short ID that matches more than one task or batch; the message lists some."""


#: how many of a batch's problem tasks its view names
BATCH_PROBLEMS_SHOWN = 20
#: how many matches of an ambiguous short ID the error lists
MATCHES_SHOWN = 5
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
        self._task_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._node_wakeups: dict[str, asyncio.Event] = {}
        #: launches sent to a node since its last heartbeat (see `_orders`)
        self._offered: dict[str, set[str]] = {}
        self._schedule_requested = False
        self.commits = GroupCommit(store, self._committed)
        #: per batch, its tasks not yet final (lost counts as final), to answer batch waits
        self._batch_open: dict[str, set[str]] = {}
        self._batch_waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: the dashboard's events and the Prometheus metrics, both fed by what is committed
        self.live = Live(cluster, self.view, clock)
        self.metrics = Metrics(cluster, store.state_counts)

    def restore(self) -> None:
        tasks = self.store.active_tasks()
        active = {t.task_id for t in tasks}
        deps = {d for t in tasks if t.state is TaskState.PENDING for d in t.after if d not in active}
        outcomes = {d: state for d in deps if (state := self._ended_as(d)) is not None}
        self._apply(self.cluster.restore(self.store.nodes(), tasks, self.clock(), outcomes))
        for task in self.cluster.tasks.values():
            if task.batch_id and not task.state.is_final:
                self._batch_open.setdefault(task.batch_id, set()).add(task.task_id)
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
        for name in orders:
            self._node_event(name).set()
        for task in tasks.values():
            if task.state.is_final:
                self._wake_task_waiters(task.task_id)
            if task.batch_id:
                self._track_batch(task)

    def _track_batch(self, task: Task) -> None:
        open_ids = self._batch_open.setdefault(task.batch_id, set())
        if not task.state.is_final:
            open_ids.add(task.task_id)
            return
        open_ids.discard(task.task_id)
        if not open_ids:
            del self._batch_open[task.batch_id]
            _wake(self._batch_waiters.pop(task.batch_id, []))

    def request_schedule(self) -> None:
        if not self._schedule_requested:
            self._schedule_requested = True
            asyncio.get_running_loop().call_soon(self._run_schedule)

    def _run_schedule(self) -> None:
        self._schedule_requested = False
        self._apply(self.cluster.schedule())

    def _node_event(self, name: str) -> asyncio.Event:
        event = self._node_wakeups.get(name)
        if event is None:
            event = self._node_wakeups[name] = asyncio.Event()
        return event

    def _wake_task_waiters(self, task_id: str) -> None:
        _wake(self._task_waiters.pop(task_id, []))

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
        batch_id = str(uuid.uuid4()) if batch or len(specs) > 1 else ""
        tasks = [convert.task_from_spec(spec, now, batch_id, owner) for spec in specs]
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
            self._batch_open[batch_id] = {t.task_id for t in tasks}
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
        outcomes = {d: state for d in set(full.values()) if (state := self._ended_as(d)) is not None}
        return specs, outcomes

    def _ended_as(self, some_id: str) -> TaskState | None:
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
            stored = await self.batch_tasks(self.resolve_batch(some_id))
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
        done = batch_id not in self._batch_open  # before the read: a batch done now is done in what it reads
        counts, problems = await asyncio.to_thread(self.store.batch_summary, batch_id, BATCH_PROBLEMS_SHOWN)
        if not counts:
            raise NotFound("batch", batch_id)
        return p.BatchView(batch_id, sum(counts.values()), counts, done, [p.TaskBrief(*row) for row in problems])

    async def wait_batch(self, batch_id: str, timeout: float) -> p.BatchView:
        """The batch once every task is final, or as it is when `timeout` runs out."""
        if batch_id in self._batch_open:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await _wait_or_timeout(self._batch_waiters, batch_id, fut, timeout)
        return await self.batch_view(batch_id)

    def kill_batch(self, batch_id: str) -> tuple[int, str]:
        if batch_id not in self._batch_open and not self.store.batch_ids_with_prefix(batch_id, 1):
            raise NotFound("batch", batch_id)
        ids = sorted(self._batch_open.get(batch_id, ()))
        ids += [t.task_id for t in self.cluster.tasks.values() if t.batch_id == batch_id and t.state.is_final]
        effects: list[Effect] = []
        for task_id in ids:
            effects += self.cluster.on_kill(task_id, self.clock())
        self._apply(effects)
        if not ids:
            raise KillRefused(f"every task of batch {batch_id} has already finished; nothing to kill")
        return len(ids), f"kill requested for {len(ids)} unfinished tasks of batch {batch_id}"

    async def wait_task(self, task_id: str, timeout: float) -> Task:
        """The task once it is final, or as it is when `timeout` runs out."""
        task = self.get_task(task_id)
        if task.state.is_final:
            return task
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await _wait_or_timeout(self._task_waiters, task_id, fut, timeout)
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

    # ---- runner requests -----------------------------------------------------------------
    async def heartbeat(self, hb: p.Heartbeat) -> p.Orders:
        """Record the heartbeat; answer with orders, holding the request open until some exist."""
        report = NodeReport(hb.node.name, tuple(hb.node.core_ids), hb.node.memory_bytes)
        held = set(hb.held)
        effects = self.cluster.on_heartbeat(report, held, self.clock())
        if any(isinstance(e, NodeChanged) for e in effects):
            self.request_schedule()
        self._apply(effects)
        self._offered.pop(report.name, None)  # this heartbeat says what the node holds now
        event = self._node_event(report.name)
        deadline = self.clock() + min(max(hb.wait, 0.0), p.MAX_WAIT_SECONDS)
        ending = frozenset(hb.ending)
        strays = self._stray_kills(report.name, held, ending)  # now, while `held` is fresh
        while True:
            event.clear()
            orders = self._orders(report.name, held, ending)
            orders.kill += strays
            strays = []
            remaining = deadline - self.clock()
            if orders.launch or orders.kill or remaining <= 0:
                await self.settled()
                return convert.orders_message(orders)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def report(self, r: p.Report) -> p.Ack:
        effects: list[Effect] = []
        offered = self._offered.get(r.node)
        if offered:  # launches the runner now says it has: no longer merely offered
            offered.difference_update(run_key(e.task_id, e.attempt) for e in (*r.started, *r.finished))
        for s in r.started:
            self.metrics.started(run_key(s.task_id, s.attempt))
            effects += self.cluster.on_started(r.node, convert.started_event(s))
        for f in r.finished:
            if f.started_at is not None:  # a short task's start may come only with its finish
                self.metrics.started(run_key(f.task_id, f.attempt))
            effects += self.cluster.on_finished(r.node, convert.finished_event(f)) or self._late(convert.finished_event(f))
        self._apply(effects)
        acked = [run_key(f.task_id, f.attempt) for f in r.finished]
        if r.held is None:
            if r.finished:
                self.request_schedule()
            return p.Ack(task_ids=acked)
        if r.finished:
            self._run_schedule()  # now, so that the freed cores' next tasks ride on this answer
        held, ending = set(r.held), frozenset(r.ending)
        orders = self._orders(r.node, held, ending)
        orders.kill += self._stray_kills(r.node, held, ending)
        # everything pending for this node goes out in this answer: its waiting heartbeat need not wake for it
        self.commits.orders.discard(r.node)
        return p.Ack(task_ids=acked, orders=convert.orders_message(orders))

    def _late(self, event: FinishedEvent) -> list[Effect]:
        """The outcome of an attempt older than its task's latest, the task already final: history only."""
        if event.task_id in self.cluster.tasks:
            return []
        task = self.commits.tasks.get(event.task_id) or self.store.get_task(event.task_id)
        if task is None or task.attempt == event.attempt or not note_late(task, event, event.state):
            return []
        return [TaskChanged(task)]

    def _orders(self, node: str, held: set[str], ending: frozenset[str]) -> CoreOrders:
        """The node's orders, leaving out launches already offered since its last heartbeat.

        Orders go out on heartbeat answers and on report acknowledgements; without this, a
        heartbeat waiting at the host would wake for the launches an acknowledgement just
        carried, and send them a second time. A heartbeat resets the offers: its `held` is the
        truth, so an order that got lost is sent again (the runner ignores a repeated launch).
        """
        offered = self._offered.setdefault(node, set())
        orders, effects = self.cluster.orders_for(node, held | offered, self.clock(), ending)
        if effects:
            self._apply(effects)
            self.request_schedule()
        offered.update(t.run_key for t in orders.launch)
        self.metrics.dispatched([t.run_key for t in orders.launch])
        return orders

    def _stray_kills(self, node: str, held: set[str], ending: frozenset[str]) -> list[str]:
        """The node's strays that the host has a record of. One it never heard of is left running:
        a host started on another database must not kill the work of a whole cluster."""
        return [k for k in self.cluster.strays(node, held, ending) if self.store.get_task(split_run_key(k)[0]) is not None]

    # ---- periodic ------------------------------------------------------------------------
    async def watch_heartbeats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            effects = self.cluster.on_tick(self.clock())
            if effects:
                for e in effects:
                    if isinstance(e, NodeChanged):
                        log.warning("node %s is %s", e.node.name, e.node.state.value)
                self._apply(effects)
                self.request_schedule()


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


def _unique(prefix: str, matches: list[str], kind: str) -> str:
    if not matches:
        raise NotFound(kind, prefix)
    if len(matches) > 1:
        shown = ", ".join(matches[:MATCHES_SHOWN]) + (", ..." if len(matches) > MATCHES_SHOWN else "")
        raise AmbiguousId(f"the short ID {prefix} matches more than one {kind}: {shown}; give more characters")
    return matches[0]
