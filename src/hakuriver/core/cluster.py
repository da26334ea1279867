"""The state machine of the whole cluster: events in, records changed, effects out.

Each `on_*` method takes the current time as an argument, changes the in-memory records, and
returns effects for the host's shell to carry out (persist a task or node, wake a runner's
long-poll). Only tasks that can still change are kept here; final ones live in the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hakuriver.core.cores import CoreSet
from hakuriver.core.model import Node, Task
from hakuriver.core.scheduler import Capacity, Request, plan
from hakuriver.core.states import NodeState, TaskState, check_transition


@dataclass(frozen=True)
class TaskChanged:
    task: Task
    #: a new record (submitted), as opposed to a change of an existing one
    created: bool = False


@dataclass(frozen=True)
class NodeChanged:
    node: Node


@dataclass(frozen=True)
class OrdersReady:
    """The node's runner has new launch or kill orders waiting."""

    node: str


Effect = TaskChanged | NodeChanged | OrdersReady


class SubmitRefused(Exception):
    """The submission can never run here (too many cores, unknown node); nothing was queued."""


class UnknownTask(Exception):
    """No active task has this ID (it may be final, then the store knows it)."""


@dataclass(frozen=True)
class NodeReport:
    """What a runner says about itself with every heartbeat."""

    name: str
    core_ids: tuple[int, ...]
    memory_bytes: int = 0


@dataclass(frozen=True)
class Started:
    task_id: str
    started_at: float
    stdout_path: str = ""
    stderr_path: str = ""


@dataclass(frozen=True)
class Finished:
    task_id: str
    finished_at: float
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    #: the runner ended it because the host ordered a kill
    killed: bool = False
    started_at: float | None = None
    stdout_path: str = ""
    stderr_path: str = ""
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    max_rss_bytes: int | None = None


@dataclass
class Orders:
    launch: list[Task] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.launch or self.kill)


class Cluster:
    def __init__(self, heartbeat_timeout: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.nodes: dict[str, Node] = {}
        #: every task that can still change, by ID
        self.tasks: dict[str, Task] = {}
        #: pending task IDs in submission order (dict: ordered, O(1) removal)
        self.queue: dict[str, None] = {}
        #: lost tasks by node, kept to take their real outcome when the node returns
        self.lost: dict[str, set[str]] = {}

    # ---- restart -------------------------------------------------------------------------
    def restore(self, nodes: Iterable[Node], tasks: Iterable[Task], now: float) -> None:
        """Rebuild from the store after a host restart.

        Nodes get a fresh heartbeat deadline: their runners have one timeout to reconnect
        before their tasks count as lost.
        """
        for node in nodes:
            node.last_heartbeat = now
            node.task_ids = set()
            node.cores = CoreSet(node.cores.all)  # ownership is rebuilt from the tasks below
            self.nodes[node.name] = node
        for task in sorted(tasks, key=lambda t: t.submitted_at):
            self._restore_task(task)

    def _restore_task(self, task: Task) -> None:
        if task.state is TaskState.PENDING:
            self.tasks[task.task_id] = task
            self.queue[task.task_id] = None
        elif task.state.holds_cores:
            node = self.nodes.get(task.node)
            if node is not None and node.cores.take_exact(task.core_ids):
                node.task_ids.add(task.task_id)
            self.tasks[task.task_id] = task
        elif task.state is TaskState.LOST:
            self.tasks[task.task_id] = task
            self.lost.setdefault(task.node, set()).add(task.task_id)

    # ---- client events -------------------------------------------------------------------
    def check_submit(self, tasks: list[Task]) -> None:
        """Raise SubmitRefused if any of the tasks could never run here; changes nothing."""
        if not self.nodes:
            raise SubmitRefused("no runner has registered with the host yet; start hakuriver.runner on a node first")
        largest = max(self.nodes.values(), key=lambda n: n.total_cores)  # once per submission, not per task
        for task in tasks:
            self._check_fits(task, largest)

    def on_submit(self, tasks: list[Task]) -> list[Effect]:
        """Queue tasks, all or none: a batch with one impossible task is refused whole."""
        self.check_submit(tasks)
        effects: list[Effect] = []
        for task in tasks:
            self.tasks[task.task_id] = task
            self.queue[task.task_id] = None
            effects.append(TaskChanged(task, created=True))
        return effects

    def _check_fits(self, task: Task, largest: Node) -> None:
        if task.target_node:
            node = self.nodes.get(task.target_node)
            if node is None:
                known = ", ".join(sorted(self.nodes))
                raise SubmitRefused(f"unknown node {task.target_node!r} (known nodes: {known})")
            if task.cores > node.total_cores:
                raise SubmitRefused(
                    f"{task.cores} cores requested but node {node.name} has only {node.total_cores} cores"
                )
            return
        if task.cores > largest.total_cores:
            raise SubmitRefused(
                f"{task.cores} cores requested but the largest node ({largest.name}) has "
                f"{largest.total_cores} cores"
            )

    def on_kill(self, task_id: str, now: float) -> list[Effect]:
        task = self.tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        if task.state is TaskState.PENDING:
            del self.queue[task_id]
            return self._finish(task, TaskState.KILLED, now, error="killed by user before it started")
        if task.state is TaskState.LOST:  # final now; if its node comes back with it, it is a stray
            self.lost.get(task.node, set()).discard(task_id)
            return self._finish(task, TaskState.KILLED, now, error="killed by user while its node was unreachable")
        if task.kill_requested:
            return []
        task.kill_requested = True
        return [TaskChanged(task), OrdersReady(task.node)]

    # ---- runner events -------------------------------------------------------------------
    def on_heartbeat(self, report: NodeReport, held: set[str], now: float) -> list[Effect]:
        """A runner is alive and holds `held` (tasks it runs or has results for)."""
        node = self.nodes.get(report.name)
        effects: list[Effect] = []
        if node is None:
            node = Node(report.name, CoreSet(report.core_ids), report.memory_bytes, NodeState.ONLINE, now)
            self.nodes[node.name] = node
            return [NodeChanged(node)]
        node.last_heartbeat = now
        if node.cores.offered != tuple(sorted(set(report.core_ids))) or node.memory_bytes != report.memory_bytes:
            self._resize(node, report)
            effects.append(NodeChanged(node))
        if node.state is NodeState.OFFLINE:
            node.state = NodeState.ONLINE
            effects.append(NodeChanged(node))
        effects += self._recover_lost(node, held, now)
        return effects

    def _resize(self, node: Node, report: NodeReport) -> None:
        """A runner restarted with other cores; tasks still running on cores it no longer offers
        keep them until they end (retiring), so no core is handed out twice."""
        held = {i for task_id in node.task_ids for i in self.tasks[task_id].core_ids}
        offered = set(report.core_ids)
        node.cores = CoreSet(offered | held)
        node.memory_bytes = report.memory_bytes
        for task_id in node.task_ids:
            node.cores.take_exact(self.tasks[task_id].core_ids)
        node.cores.retire(held - offered)

    def _recover_lost(self, node: Node, held: set[str], now: float) -> list[Effect]:
        """Lost tasks the node still holds are running again (their result follows)."""
        effects: list[Effect] = []
        for task_id in sorted(self.lost.get(node.name, set()) & held):
            task = self.tasks[task_id]
            if not node.cores.take_exact(task.core_ids):
                continue  # its cores went elsewhere; stays lost, its result may still arrive
            self.lost[node.name].discard(task_id)
            check_transition(task.state, TaskState.RUNNING)
            task.state = TaskState.RUNNING
            task.error = ""
            node.task_ids.add(task_id)
            effects.append(TaskChanged(task))
        return effects

    def orders_for(
        self, node_name: str, held: set[str], now: float, ending: frozenset[str] = frozenset()
    ) -> tuple[Orders, list[Effect]]:
        """What the node's runner should do next, given the tasks it holds and those already ending there."""
        node = self.nodes.get(node_name)
        orders, effects = Orders(), []
        if node is None or node.state is NodeState.OFFLINE:
            return orders, effects
        for task_id in sorted(node.task_ids, key=lambda i: self.tasks[i].submitted_at):
            task = self.tasks[task_id]
            if task.kill_requested and task_id in held:
                if task_id not in ending:
                    orders.kill.append(task_id)
            elif task.kill_requested and task.state is TaskState.ASSIGNING:
                # never delivered: nothing runs, so it is killed right here
                effects += self._finish(task, TaskState.KILLED, now, error="killed by user before it started")
            elif task.state is TaskState.ASSIGNING and task_id not in held:
                orders.launch.append(task)
        return orders, effects

    def strays(self, node_name: str, held: set[str], ending: frozenset[str]) -> list[str]:
        """Tasks the node's runner still runs that are not active here: killed while the node was
        unreachable (before a host restart too: this needs no memory of them), or unknown.

        `held` must be what the runner itself just said: a launch the host sent since, or a
        heartbeat's `held` grown stale while it waited, would count tasks that ended normally.
        """
        node = self.nodes.get(node_name)
        if node is None or node.state is NodeState.OFFLINE:
            return []
        return sorted(t for t in held if t not in self.tasks and t not in ending)  # O(held), not O(tasks)

    def on_started(self, node_name: str, event: Started) -> list[Effect]:
        task = self.tasks.get(event.task_id)
        if task is None or task.node != node_name or task.state not in (TaskState.ASSIGNING, TaskState.LOST):
            return []
        if task.state is TaskState.LOST and self.nodes[node_name].state is not NodeState.ONLINE:
            # noted, but not reclaimed: nothing times out an offline node's tasks; its next heartbeat recovers it
            task.started_at = event.started_at
            task.stdout_path, task.stderr_path = event.stdout_path, event.stderr_path
            return [TaskChanged(task)]
        if task.state is TaskState.LOST and not self._reclaim(task):
            return []
        task.state = TaskState.RUNNING
        task.started_at = event.started_at
        task.stdout_path, task.stderr_path = event.stdout_path, event.stderr_path
        return [TaskChanged(task)]

    def on_finished(self, node_name: str, event: Finished) -> list[Effect]:
        task = self.tasks.get(event.task_id)
        if task is None or task.node != node_name:
            return []
        if task.state is TaskState.LOST:
            self.lost.get(node_name, set()).discard(task.task_id)
        if event.started_at is not None and task.started_at is None:
            task.started_at = event.started_at
        if event.stdout_path:
            task.stdout_path, task.stderr_path = event.stdout_path, event.stderr_path
        task.exit_code, task.signal = event.exit_code, event.signal
        task.cpu_user_seconds, task.cpu_system_seconds = event.cpu_user_seconds, event.cpu_system_seconds
        task.max_rss_bytes = event.max_rss_bytes
        return self._finish(task, _final_state(event), event.finished_at, error=event.error)

    def on_tick(self, now: float) -> list[Effect]:
        """Nodes silent for longer than the heartbeat timeout go offline; their tasks are lost."""
        effects: list[Effect] = []
        for node in self.nodes.values():
            if node.state is NodeState.ONLINE and now - node.last_heartbeat > self.heartbeat_timeout:
                effects += self._node_went_silent(node, now)
        return effects

    def _node_went_silent(self, node: Node, now: float) -> list[Effect]:
        node.state = NodeState.OFFLINE
        effects: list[Effect] = [NodeChanged(node)]
        why = f"node {node.name} stopped answering (no heartbeat for {self.heartbeat_timeout:g}s)"
        for task_id in sorted(node.task_ids):
            task = self.tasks[task_id]
            if task.kill_requested:  # final now; if the node comes back with it, it is a stray
                effects += self._finish(task, TaskState.KILLED, now, error=f"killed by user; {why}")
            else:
                self.lost.setdefault(node.name, set()).add(task_id)
                effects += self._finish(task, TaskState.LOST, now, error=why)
        return effects

    # ---- scheduling ----------------------------------------------------------------------
    def schedule(self) -> list[Effect]:
        """Place queued tasks on online nodes and pick their exact core IDs."""
        if not self.queue:
            return []
        online = [
            Capacity(n.name, n.free_cores, n.total_cores)
            for n in self.nodes.values()
            if n.state is NodeState.ONLINE
        ]
        if not online:
            return []
        requests = (self._request(task_id) for task_id in self.queue)
        effects: list[Effect] = []
        woken: set[str] = set()
        for placement in plan(requests, online):
            task = self.tasks[placement.task_id]
            node = self.nodes[placement.node]
            del self.queue[task.task_id]
            check_transition(task.state, TaskState.ASSIGNING)
            task.state, task.node = TaskState.ASSIGNING, node.name
            task.core_ids = node.cores.take(task.cores)
            node.task_ids.add(task.task_id)
            effects.append(TaskChanged(task))
            woken.add(node.name)
        effects += [OrdersReady(name) for name in sorted(woken)]
        return effects

    def _request(self, task_id: str) -> Request:
        task = self.tasks[task_id]
        return Request(task_id, task.cores, task.target_node)

    # ---- shared steps --------------------------------------------------------------------
    def _reclaim(self, task: Task) -> bool:
        node = self.nodes[task.node]
        if not node.cores.take_exact(task.core_ids):
            return False
        self.lost.get(node.name, set()).discard(task.task_id)
        node.task_ids.add(task.task_id)
        return True

    def _finish(self, task: Task, state: TaskState, now: float, error: str = "") -> list[Effect]:
        check_transition(task.state, state)
        effects: list[Effect] = [TaskChanged(task)]
        node = self.nodes.get(task.node)
        if node is not None and task.task_id in node.task_ids:
            node.task_ids.discard(task.task_id)
            total = node.total_cores
            node.cores.give_back(task.core_ids)
            if node.total_cores != total:  # it held cores its node no longer offers
                effects.append(NodeChanged(node))
        task.state = state
        task.finished_at = now
        task.error = error
        if state is not TaskState.LOST:
            del self.tasks[task.task_id]
        return effects

    # ---- checks --------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Disjoint core sets, free + used = total, and every holding task on its node."""
        for node in self.nodes.values():
            used: set[int] = set()
            for task_id in node.task_ids:
                task = self.tasks[task_id]
                assert task.state.holds_cores, f"{task_id} is {task.state.value} on {node.name}"
                assert task.node == node.name, f"{task_id} is on {task.node}, listed on {node.name}"
                assert not used & set(task.core_ids), f"cores {sorted(used & set(task.core_ids))} shared"
                used |= set(task.core_ids)
            assert len(used) + node.free_cores == node.total_cores, f"core count broken on {node.name}"
            assert not used & set(node.cores.free_ids()), f"taken cores listed free on {node.name}"
        for task in self.tasks.values():
            if task.state.holds_cores:
                assert task.task_id in self.nodes[task.node].task_ids, f"{task.task_id} not on its node"
            assert (task.state is TaskState.PENDING) == (task.task_id in self.queue), f"queue broken: {task.task_id}"


def _final_state(event: Finished) -> TaskState:
    if event.killed:
        return TaskState.KILLED
    if event.exit_code == 0 and event.signal is None and not event.error:
        return TaskState.COMPLETED
    return TaskState.FAILED
