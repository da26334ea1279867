"""The runners' side of the host: heartbeats held open until there are orders, reports of
starts and results answered with orders, and noticing runners whose heartbeats stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hakuriver import protocol as p
from hakuriver.core.attempts import note_late
from hakuriver.core.cluster import Cluster, Effect, NodeChanged, TaskChanged
from hakuriver.core.cluster import Finished as FinishedEvent
from hakuriver.core.cluster import Orders as CoreOrders
from hakuriver.core.model import run_key, split_run_key
from hakuriver.host import convert
from hakuriver.host.commits import GroupCommit
from hakuriver.host.metrics import Metrics
from hakuriver.host.scheduling import Scheduler
from hakuriver.host.store import Store

log = logging.getLogger("hakuriver.host")


class Runners:
    def __init__(self, cluster: Cluster, store: Store, commits: GroupCommit, scheduler: Scheduler, metrics: Metrics,
                 clock: Callable[[], float]) -> None:
        self.cluster = cluster
        self.store = store
        self.commits = commits
        self.scheduler = scheduler
        self.metrics = metrics
        self.clock = clock
        self._node_wakeups: dict[str, asyncio.Event] = {}
        #: launches sent to a node since its last heartbeat (see `_orders`)
        self._offered: dict[str, set[str]] = {}

    def wake(self, nodes: set[str]) -> None:
        """Wake the waiting heartbeats of nodes whose new orders are committed."""
        for name in nodes:
            self._node_event(name).set()

    async def heartbeat(self, hb: p.Heartbeat) -> p.Orders:
        """Record the heartbeat; answer with orders, holding the request open until some exist."""
        report = convert.node_report(hb)
        held = set(hb.held)
        effects = self.cluster.on_heartbeat(report, held, self.clock())
        if any(isinstance(e, NodeChanged) for e in effects):
            self.scheduler.request()
        self.commits.stage(effects)
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
                await self.commits.settled()
                return convert.orders_message(orders)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def report(self, r: p.Report) -> p.Ack:
        effects: list[Effect] = []
        offered = self._offered.get(r.node)
        if offered:  # finished: neither launched again nor killed, so no longer kept (a started one
            # is: a heartbeat waiting since before its launch must still see it to send its kill)
            offered.difference_update(run_key(f.task_id, f.attempt) for f in r.finished)
        for s in r.started:
            self.metrics.started(run_key(s.task_id, s.attempt))
            effects += self.cluster.on_started(r.node, convert.started_event(s))
        for f in r.finished:
            if f.started_at is not None:  # a short task's start may come only with its finish
                self.metrics.started(run_key(f.task_id, f.attempt))
            effects += self.cluster.on_finished(r.node, convert.finished_event(f)) or self._late(convert.finished_event(f))
        self.commits.stage(effects)
        acked = [run_key(f.task_id, f.attempt) for f in r.finished]
        if r.held is None:
            if r.finished:
                self.scheduler.request()
            return p.Ack(task_ids=acked)
        if r.finished:
            self.scheduler.run()  # now, so that the freed cores' next tasks ride on this answer
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
        carried, and send them a second time. Offered launches also count as held for kills: a
        waiting heartbeat's `held` predates them, and a kill of one must still go out on it. A
        heartbeat resets the offers: its `held` is the truth, so an order that got lost is sent
        again (the runner ignores a repeated launch). A finished launch leaves the offers.
        """
        offered = self._offered.setdefault(node, set())
        orders, effects = self.cluster.orders_for(node, held | offered, self.clock(), ending)
        if effects:
            self.commits.stage(effects)
            self.scheduler.request()
        offered.update(t.run_key for t in orders.launch)
        self.metrics.dispatched([t.run_key for t in orders.launch])
        return orders

    def _stray_kills(self, node: str, held: set[str], ending: frozenset[str]) -> list[str]:
        """The node's strays that the host has a record of. One it never heard of is left running:
        a host started on another database must not kill the work of a whole cluster."""
        return [k for k in self.cluster.strays(node, held, ending) if self.store.get_task(split_run_key(k)[0]) is not None]

    def _node_event(self, name: str) -> asyncio.Event:
        event = self._node_wakeups.get(name)
        if event is None:
            event = self._node_wakeups[name] = asyncio.Event()
        return event

    async def watch_heartbeats(self, interval: float) -> None:
        """Every `interval` seconds, mark the nodes whose heartbeats stopped (and their tasks)."""
        while True:
            await asyncio.sleep(interval)
            effects = self.cluster.on_tick(self.clock())
            if effects:
                for e in effects:
                    if isinstance(e, NodeChanged):
                        log.warning("node %s is %s", e.node.name, e.node.state.value)
                self.commits.stage(effects)
                self.scheduler.request()
