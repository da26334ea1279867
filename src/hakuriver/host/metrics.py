"""`GET /metrics`: the host's state in Prometheus text format, through prometheus-client.

Counters and the dispatch-latency histogram are updated as things happen. Gauges are read at
scrape time: what lives in memory (active tasks, nodes, the queue) is copied on the event loop
(`sample`), and the counts of finished tasks by state come from the database on a worker
thread, at most every FINAL_COUNTS_TTL seconds (a GROUP BY over a big history is not free).
Each host has its own registry, so tests and several hosts in one process never mix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hakuriver.core.cluster import Cluster
from hakuriver.core.model import Task
from hakuriver.core.states import NodeState, TaskState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: seconds a count of finished tasks by state is reused
FINAL_COUNTS_TTL = 10.0
#: launches whose start is awaited, at most (older ones are forgotten: a node that never answers)
PENDING_DISPATCHES = 100_000
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, cluster: Cluster, final_counts: Callable[[], dict[str, int]]) -> None:
        self.cluster = cluster
        self._final_counts = final_counts
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter("hakuriver_tasks_submitted", "Tasks accepted by the host", registry=self.registry)
        self.finished = Counter("hakuriver_tasks_finished", "Tasks that reached a final state, by that state",
                                ["state"], registry=self.registry)
        self.dispatch_latency = Histogram(
            "hakuriver_dispatch_latency_seconds",
            "From the host sending a launch order to the runner reporting the task started",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        self._dispatched: dict[str, float] = {}
        self._counted: dict[str, None] = {}  # run keys of finished attempts already counted (bounded, ordered)
        self._cache: tuple[float, dict[str, int]] = (0.0, {})
        self._lock = threading.Lock()

    # ---- as things happen (event loop) -------------------------------------------------------
    def dispatched(self, run_keys: list[str]) -> None:
        now = time.monotonic()
        if len(self._dispatched) + len(run_keys) > PENDING_DISPATCHES:
            self._dispatched.clear()
        for key in run_keys:
            self._dispatched.setdefault(key, now)

    def started(self, run_key: str) -> None:
        sent = self._dispatched.pop(run_key, None)
        if sent is not None:
            self.dispatch_latency.observe(time.monotonic() - sent)

    def committed(self, tasks: dict[str, Task]) -> None:
        counts: dict[str, int] = {}  # by final state: one increment each (a commit may hold thousands)
        for task in tasks.values():
            if task.state.is_final and (key := task.run_key) not in self._counted:
                self._counted[key] = None
                counts[task.state.value] = counts.get(task.state.value, 0) + 1
        while len(self._counted) > PENDING_DISPATCHES:
            del self._counted[next(iter(self._counted))]
        for state, n in counts.items():
            self.finished.labels(state).inc(n)

    # ---- at scrape time ---------------------------------------------------------------------
    def sample(self) -> dict[str, Any]:
        """What lives in memory, copied on the event loop (a worker thread must not walk it)."""
        active: dict[str, int] = {}
        for task in self.cluster.tasks.values():
            active[task.state.value] = active.get(task.state.value, 0) + 1
        nodes = [(n.name, n.total_cores, n.total_cores - n.free_cores, n.state is NodeState.ONLINE)
                 for n in self.cluster.nodes.values()]
        return {"active": active, "nodes": nodes, "queue": len(self.cluster.queue),
                "queued_ahead": self.cluster.queued_ahead_total, "handed_back": self.cluster.handed_back_total}

    def render(self, sample: dict[str, Any]) -> bytes:
        """The text of a scrape (a worker thread's job: it may read the database)."""
        with self._lock:
            at, finals = self._cache
            if time.monotonic() - at > FINAL_COUNTS_TTL:
                finals = self._final_counts()
                self._cache = (time.monotonic(), finals)
            self._gauges.sample = {**sample, "finals": finals}
            return generate_latest(self.registry)


#: the states of the tasks the cluster holds in memory (the rest are counted in the database)
_IN_MEMORY = frozenset(s for s in TaskState if not s.is_final or s is TaskState.LOST)


class _Gauges(Collector):
    def __init__(self) -> None:
        self.sample: dict[str, Any] = {"active": {}, "nodes": [], "queue": 0, "queued_ahead": 0, "handed_back": 0, "finals": {}}

    def describe(self) -> list[Any]:
        return []  # read at collect time only: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        s = self.sample
        tasks = GaugeMetricFamily("hakuriver_tasks", "Tasks by state", labels=["state"])
        for state in TaskState:
            counts = s["active"] if state in _IN_MEMORY else s["finals"]
            tasks.add_metric([state.value], counts.get(state.value, 0))
        yield tasks
        yield GaugeMetricFamily("hakuriver_queue_length", "Tasks waiting for cores", value=s["queue"])
        yield CounterMetricFamily("hakuriver_tasks_queued_ahead", "Tasks queued on a node behind a busy core since "
                                  "the host started", value=s["queued_ahead"])
        yield CounterMetricFamily("hakuriver_tasks_handed_back", "Tasks queued ahead that waited past their limit "
                                  "and were handed back unrun, since the host started", value=s["handed_back"])
        total = GaugeMetricFamily("hakuriver_node_cores", "Cores a node offers", labels=["node"])
        used = GaugeMetricFamily("hakuriver_node_cores_used", "Cores of a node held by tasks", labels=["node"])
        for name, cores, taken, _ in s["nodes"]:
            total.add_metric([name], cores)
            used.add_metric([name], taken)
        yield total
        yield used
        yield GaugeMetricFamily("hakuriver_nodes_online", "Nodes online", value=sum(1 for n in s["nodes"] if n[3]))


__all__ = ["CONTENT_TYPE", "Metrics"]
