"""What the runners tell the cluster: heartbeats, starts and results, orders, and their silence.

Part of `Cluster` (core/cluster.py), kept apart because it is one concern and the class would be
twice the size of a module otherwise: these methods change the same records and use the shared
steps defined there (`_hold`, `_release`, `_end_attempt`, `_finish`, `_enqueue`).
"""

from __future__ import annotations

from hakuriver.core.attempts import close_attempt, note_late
from hakuriver.core.cores import CoreSet
from hakuriver.core.events import Effect, Finished, NodeChanged, NodeReport, NodeTaken, Orders, Started, TaskChanged
from hakuriver.core.model import Node, Task, split_run_key
from hakuriver.core.states import NodeState, TaskState, check_transition

class RunnerEvents:
    """The runner-facing half of `Cluster` (a mixin: it has no state of its own)."""

    heartbeat_timeout: float
    ahead_wait: float
    nodes: dict[str, Node]
    tasks: dict[str, Task]
    lost: dict[str, set[str]]
    rank: dict[str, int]
    handed_back_total: int

    # ---- runner events -------------------------------------------------------------------
    def on_heartbeat(self, report: NodeReport, held: set[str], now: float) -> list[Effect]:
        """A runner is alive and holds `held` (run keys of the attempts it runs or has results for)."""
        node = self.nodes.get(report.name)
        effects: list[Effect] = []
        if node is None:
            node = Node(report.name, CoreSet(report.core_ids), report.memory_bytes, NodeState.ONLINE, now,
                        queues_ahead=report.queues_ahead, runner_id=report.runner_id)
            self.nodes[node.name] = node
            return [NodeChanged(node)]
        if node.state is NodeState.ONLINE and report.runner_id and node.runner_id not in ("", report.runner_id):
            raise NodeTaken(
                f"node {node.name} is served by another runner: two runners have this name (give each its own "
                f"[runner] node_name); a runner that replaces it is accepted once {node.name} has been silent "
                f"for {self.heartbeat_timeout:g}s")
        node.runner_id = report.runner_id or node.runner_id
        node.last_heartbeat = now
        if node.leaving != report.leaving:
            node.leaving = report.leaving
            effects.append(NodeChanged(node))  # (placement changes: its cores are offered again, or not)
            if report.leaving and node.state is NodeState.ONLINE:
                effects += self._runner_leaving(node, held, now)
        node.queues_ahead = report.queues_ahead
        if node.cores.offered != tuple(sorted(set(report.core_ids))) or node.memory_bytes != report.memory_bytes:
            self._resize(node, report)
            effects.append(NodeChanged(node))
        returning = node.state is NodeState.OFFLINE
        if returning:
            node.state = NodeState.ONLINE
            effects.append(NodeChanged(node))
        effects += self._recover_lost(node, held, now, returning)
        return effects

    def _runner_leaving(self, node: Node, held: set[str], now: float) -> list[Effect]:
        """Its runner stops, and its tasks run on under the keeper: what it never received is queued
        again at once (killed, if a kill waits), rather than lost when the node goes silent."""
        effects: list[Effect] = []
        for task_id in sorted(node.task_ids, key=self.rank.__getitem__):
            task = self.tasks[task_id]
            if task.state is TaskState.ASSIGNING and task.run_key not in held:
                effects += self._never_delivered(task, now, f"the runner of {node.name} stopped before it "
                                                            "received it: queued again")
        return effects

    def _resize(self, node: Node, report: NodeReport) -> None:
        """A runner restarted with other cores; tasks still running on cores it no longer offers
        keep them until they end (retiring), so no core is handed out twice."""
        tasks = [self.tasks[task_id] for task_id in node.task_ids]
        used = {core for task in tasks for core in task.core_ids}
        offered = set(report.core_ids)
        self._occupy(node, CoreSet(offered | used), tasks)
        node.memory_bytes = report.memory_bytes
        node.cores.retire(used - offered)

    def _recover_lost(self, node: Node, held: set[str], now: float, returning: bool) -> list[Effect]:
        """Lost tasks the node still holds are running again (their result follows). One it does
        not hold on the heartbeat that brings it back, and that never started, is queued again:
        its launch never reached the node (`held` counts launches under way too)."""
        effects: list[Effect] = []
        for task_id in sorted(self.lost.get(node.name, set()), key=self.rank.__getitem__):
            task = self.tasks[task_id]
            if returning and task.run_key not in held and task.started_at is None:
                effects += self._run_again(task, node, now)
                continue
            if task.run_key not in held or not self._take_back(task, node):
                continue  # gone, or its cores went elsewhere: stays lost, its result may still arrive
            self.lost[node.name].discard(task_id)
            check_transition(task.state, TaskState.RUNNING)
            task.state = TaskState.RUNNING
            task.error = ""
            self._hold(task, node)
            self.batches.lost_is_back(task)
            effects.append(TaskChanged(task))
        return effects

    def _run_again(self, task: Task, node: Node, now: float) -> list[Effect]:
        """A new attempt for a lost one that never started (it does not count against --retries)."""
        return self._never_delivered(task, now, f"{task.error}; it had not started there, and {node.name} "
                                                "came back without it: queued again")

    def _never_delivered(self, task: Task, now: float, error: str) -> list[Effect]:
        """The attempt never ran on its node: killed, if a kill waits; else closed as not delivered
        (no retry used), and the task queued again in its place as a new attempt, so anything still
        naming the old one is history. (A lost task has no kill waiting: killing it ends it at once.)"""
        if task.kill_requested:
            return self._finish(task, TaskState.KILLED, now, error="killed by user before it started")
        if task.state is TaskState.LOST:
            self.lost.get(task.node, set()).discard(task.task_id)
            self.batches.lost_is_back(task)
        check_transition(task.state, TaskState.PENDING)
        effects = [TaskChanged(task), *self._release(task)]
        task.started_at = None
        close_attempt(task, TaskState.LOST, now, error, delivered=False)
        self._enqueue(task)
        return effects

    def orders_for(
        self, node_name: str, held: set[str], now: float, ending: frozenset[str] = frozenset()
    ) -> tuple[Orders, list[Effect]]:
        """What the node's runner should do next, given the attempts it holds and those already ending there."""
        node = self.nodes.get(node_name)
        orders, effects = Orders(), []
        if node is None or node.state is NodeState.OFFLINE:
            return orders, effects
        if (node.queues_ahead or node.queued.total) and self.ahead_wait > 0:  # (it may stop queueing with work queued)
            orders.wait_limit = self.ahead_wait
        # in queue order: the node keeps that order among the tasks queued behind one core
        for task_id in sorted(node.task_ids, key=self.rank.__getitem__):
            task = self.tasks[task_id]
            key = task.run_key
            if task.kill_requested and key in held:
                if key not in ending:
                    orders.kill.append(key)
            elif task.kill_requested and task.state is TaskState.ASSIGNING:
                effects += self._never_delivered(task, now, "")  # nothing runs: it is killed right here
            elif task.state is TaskState.ASSIGNING and key not in held:
                orders.launch.append(task)
        return orders, effects

    def strays(self, node_name: str, held: set[str], ending: frozenset[str]) -> list[str]:
        """Attempts the node's runner still runs that are not the current attempt of an active
        task: killed while the node was unreachable (before a host restart too: this needs no
        memory of them), retried elsewhere meanwhile, or unknown. Run keys, O(held).

        `held` must be what the runner itself just said: a launch the host sent since, or a
        heartbeat's `held` grown stale while it waited, would count tasks that ended normally.
        """
        node = self.nodes.get(node_name)
        if node is None or node.state is NodeState.OFFLINE:
            return []
        return sorted(k for k in held if k not in ending and not self._is_current(k))

    def _is_current(self, key: str) -> bool:
        task_id, attempt = split_run_key(key)
        task = self.tasks.get(task_id)
        return task is not None and task.attempt == attempt

    def on_started(self, node_name: str, event: Started) -> list[Effect]:
        task = self.tasks.get(event.task_id)
        if (task is None or task.node != node_name or task.attempt != event.attempt
                or task.state not in (TaskState.ASSIGNING, TaskState.LOST)):
            return []
        if task.state is TaskState.LOST and self.nodes[node_name].state is not NodeState.ONLINE:
            # noted, but not reclaimed: nothing times out an offline node's tasks; its next heartbeat recovers it
            _note_start(task, event)
            return [TaskChanged(task)]
        if task.state is TaskState.LOST and not self._reclaim(task):
            return []
        task.state = TaskState.RUNNING
        _note_start(task, event)
        return [TaskChanged(task)]

    def on_finished(self, node_name: str, event: Finished) -> list[Effect]:
        task = self.tasks.get(event.task_id)
        if task is not None and task.attempt != event.attempt:
            return [TaskChanged(task)] if note_late(task, event, event.state) else []
        if task is None or task.node != node_name:
            return []
        if event.returned:
            return self._handed_back(task, node_name, event.finished_at)
        if task.state is TaskState.LOST:
            self.lost.get(node_name, set()).discard(task.task_id)
        _note_start(task, event)
        if task.batch_id and task.started_at is not None and event.state is TaskState.COMPLETED:
            self.short.ran(task.batch_id, event.finished_at - task.started_at)
        task.exit_code, task.signal = event.exit_code, event.signal
        task.cpu_user_seconds, task.cpu_system_seconds = event.cpu_user_seconds, event.cpu_system_seconds
        task.max_rss_bytes = event.max_rss_bytes
        return self._end_attempt(task, event.state, event.finished_at, event.error)

    def _handed_back(self, task: Task, node_name: str, now: float) -> list[Effect]:
        """Queued ahead, the task waited too long for its core there and never ran: back to the
        queue in its place, as a new attempt that does not count against --retries (so that
        anything still naming the old one, a report sent again or a launch on its way, is only
        history), and its batch is no longer queued ahead for now."""
        if task.state not in (TaskState.ASSIGNING, TaskState.RUNNING, TaskState.LOST):
            return []
        self.short.returned(task.batch_id)
        if not task.kill_requested:  # (one with a kill waiting is killed, not handed back)
            self.handed_back_total += 1
        return self._never_delivered(task, now, f"queued ahead on {node_name}, it waited past its limit for a busy "
                                                "core and was handed back unrun: queued again")

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
                effects += self._end_attempt(task, TaskState.LOST, now, why)
        return effects

    @staticmethod
    def _take_back(task: Task, node: Node) -> bool:
        """A lost task is back on its node: its cores again, or, for a one-core task whose core another
        task of the node uses (they were queued ahead one behind the other), a place behind it."""
        if node.cores.take_exact(task.core_ids):
            return True
        core = task.core_ids[0] if len(task.core_ids) == 1 else -1
        if core not in node.cores.offered or core in node.cores.free_ids():
            return False
        node.queued.add(core)
        return True

    def _reclaim(self, task: Task) -> bool:
        node = self.nodes[task.node]
        if not self._take_back(task, node):
            return False
        self.lost.get(node.name, set()).discard(task.task_id)
        self._hold(task, node)
        self.batches.lost_is_back(task)
        return True


def _note_start(task: Task, event: Started | Finished) -> None:
    """Where, when and as whom the attempt ran, from its start report or (a short task) its finish."""
    if event.started_at is not None and (task.started_at is None or isinstance(event, Started)):
        task.started_at = event.started_at
    if event.stdout_path:
        task.stdout_path, task.stderr_path = event.stdout_path, event.stderr_path
    if event.unix_user:
        task.unix_user = event.unix_user
