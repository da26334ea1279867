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
from collections.abc import Callable

from hakuriver import protocol as p
from hakuriver.core.cluster import (
    Orders as CoreOrders,
    Cluster,
    Effect,
    Finished,
    NodeChanged,
    NodeReport,
    Started,
    TaskChanged,
    UnknownTask,
)
from hakuriver.core.model import Node, Task
from hakuriver.host.store import Store

log = logging.getLogger("hakuriver.host")


class TaskNotFound(Exception):
    pass


class KillRefused(Exception):
    pass


class HostService:
    def __init__(self, cluster: Cluster, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.store = store
        self.clock = clock
        self._task_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._node_wakeups: dict[str, asyncio.Event] = {}
        #: launches sent to a node since its last heartbeat (see `_orders`)
        self._offered: dict[str, set[str]] = {}
        self._schedule_requested = False
        self._staged_tasks: dict[str, Task] = {}
        self._staged_nodes: dict[str, Node] = {}
        self._staged_orders: set[str] = set()
        self._staged_new: set[str] = set()
        self._commit: asyncio.Future[None] | None = None
        #: per batch, its tasks not yet final (lost counts as final), to answer batch waits
        self._batch_open: dict[str, set[str]] = {}
        self._batch_waiters: dict[str, list[asyncio.Future[None]]] = {}

    def restore(self) -> None:
        self.cluster.restore(self.store.nodes(), self.store.active_tasks(), self.clock())
        for task in self.cluster.tasks.values():
            if task.batch_id and not task.state.is_final:
                self._batch_open.setdefault(task.batch_id, set()).add(task.task_id)
        log.info("restored %d nodes and %d active tasks", len(self.cluster.nodes), len(self.cluster.tasks))

    # ---- effects -------------------------------------------------------------------------
    def _apply(self, effects: list[Effect]) -> None:
        """Stage changed records; one commit per loop iteration covers everything staged.

        Group commit: a burst of events costs one SQLite transaction. Runners and waiters are
        woken only after the commit, and handlers reply only after `settled()`, so nothing a
        client or runner is told can be lost by a host crash.
        """
        for e in effects:
            if isinstance(e, TaskChanged):
                self._staged_tasks[e.task.task_id] = e.task
                if e.created:
                    self._staged_new.add(e.task.task_id)
            elif isinstance(e, NodeChanged):
                self._staged_nodes[e.node.name] = e.node
            else:
                self._staged_orders.add(e.node)
        if effects and self._commit is None:
            self._commit = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        tasks, nodes, orders, new = self._staged_tasks, self._staged_nodes, self._staged_orders, self._staged_new
        self._staged_tasks, self._staged_nodes, self._staged_orders, self._staged_new = {}, {}, set(), set()
        commit, self._commit = self._commit, None
        try:
            self.store.save(
                created=[t for t in tasks.values() if t.task_id in new],
                changed=[t for t in tasks.values() if t.task_id not in new],
                nodes=nodes.values(),
            )
        except Exception as exc:  # the store logs nothing itself; say it here, then fail the waiters
            log.exception("could not commit %d task and %d node changes", len(tasks), len(nodes))
            if commit is not None:
                commit.set_exception(exc)
                commit.exception()  # mark it retrieved: handlers that await it report the error
            return
        for name in orders:
            self._node_event(name).set()
        for task in tasks.values():
            if task.state.is_final:
                self._wake_task_waiters(task.task_id)
            if task.batch_id:
                self._track_batch(task)
        if commit is not None:
            commit.set_result(None)

    async def settled(self) -> None:
        """Return once every change staged so far is committed."""
        if self._commit is not None:
            await asyncio.shield(self._commit)

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
    def submit(self, specs: list[p.TaskSpec], batch: bool = False) -> tuple[list[str], str]:
        """Queue the tasks; their IDs are returned only after the records are committed."""
        now = self.clock()
        batch_id = str(uuid.uuid4()) if batch or len(specs) > 1 else ""
        tasks = [_task_from_spec(spec, now, batch_id) for spec in specs]
        self._apply(self.cluster.on_submit(tasks))
        self.request_schedule()
        return [t.task_id for t in tasks], batch_id

    def get_task(self, task_id: str) -> Task:
        task = self.cluster.tasks.get(task_id) or self._staged_tasks.get(task_id) or self.store.get_task(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    def batch_tasks(self, batch_id: str) -> list[Task]:
        tasks = self.store.batch_tasks(batch_id)
        if not tasks:
            raise TaskNotFound(batch_id)
        return tasks

    def batch_view(self, batch_id: str) -> p.BatchView:
        counts = self.store.batch_counts(batch_id)
        if not counts:
            raise TaskNotFound(batch_id)
        problems = [p.TaskBrief(*row) for row in self.store.batch_problems(batch_id, 20)]
        return p.BatchView(batch_id, sum(counts.values()), counts, batch_id not in self._batch_open, problems)

    async def wait_batch(self, batch_id: str, timeout: float) -> p.BatchView:
        """The batch once every task is final, or as it is when `timeout` runs out."""
        view = self.batch_view(batch_id)
        if not view.done:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await _wait_or_timeout(self._batch_waiters, batch_id, fut, timeout)
            view = self.batch_view(batch_id)
        return view

    def kill_batch(self, batch_id: str) -> tuple[int, str]:
        self.batch_view(batch_id)  # raises TaskNotFound for an unknown batch
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
        while True:
            event.clear()
            orders = self._orders(report.name, held, ending)
            remaining = deadline - self.clock()
            if orders.launch or orders.kill or remaining <= 0:
                await self.settled()
                return _orders_message(orders)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def report(self, r: p.Report) -> p.Ack:
        effects: list[Effect] = []
        for s in r.started:
            effects += self.cluster.on_started(r.node, Started(s.task_id, s.started_at, s.stdout_path, s.stderr_path))
        for f in r.finished:
            effects += self.cluster.on_finished(r.node, _finished_event(f))
        self._apply(effects)
        acked = [f.task_id for f in r.finished]
        if r.held is None:
            if r.finished:
                self.request_schedule()
            return p.Ack(task_ids=acked)
        if r.finished:
            self._run_schedule()  # now, so that the freed cores' next tasks ride on this answer
        orders = self._orders(r.node, set(r.held), frozenset(r.ending))
        # everything pending for this node goes out in this answer: its waiting heartbeat need not wake for it
        self._staged_orders.discard(r.node)
        return p.Ack(task_ids=acked, orders=_orders_message(orders))

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
        offered.update(t.task_id for t in orders.launch)
        return orders

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


def _task_from_spec(spec: p.TaskSpec, now: float, batch_id: str) -> Task:
    return Task(
        task_id=str(uuid.uuid4()), command=spec.command, args=list(spec.args), env=dict(spec.env),
        cores=spec.cores, submitted_at=now, cwd=spec.cwd, target_node=spec.node, batch_id=batch_id,
    )


def _finished_event(f: p.TaskFinished) -> Finished:
    return Finished(
        f.task_id, f.finished_at, f.exit_code, f.signal, f.error, f.killed, f.started_at, f.stdout_path, f.stderr_path
    )


def _orders_message(orders: CoreOrders) -> p.Orders:
    return p.Orders(
        launch=[
            p.LaunchOrder(t.task_id, t.command, t.args, t.env, list(t.core_ids), t.cwd) for t in orders.launch
        ],
        kill=orders.kill,
    )


def task_view(t: Task) -> p.TaskView:
    return p.TaskView(
        task_id=t.task_id, state=t.state.value, command=t.command, args=t.args, env=t.env, cores=t.cores,
        node=t.node, core_ids=list(t.core_ids), exit_code=t.exit_code, signal=t.signal, error=t.error,
        submitted_at=t.submitted_at, started_at=t.started_at, finished_at=t.finished_at,
        stdout_path=t.stdout_path, stderr_path=t.stderr_path, cwd=t.cwd, target_node=t.target_node,
        batch_id=t.batch_id, kill_requested=t.kill_requested,
    )


def node_view(n: Node) -> p.NodeView:
    return p.NodeView(
        name=n.name, state=n.state.value, total_cores=n.total_cores, free_cores=n.free_cores,
        running_tasks=len(n.task_ids), memory_bytes=n.memory_bytes, last_heartbeat=n.last_heartbeat,
    )
