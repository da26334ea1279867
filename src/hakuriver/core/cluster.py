"""The state machine of the whole cluster: events in, records changed, effects out.

Each `on_*` method takes the current time as an argument, changes the in-memory records, and
returns effects for the host's shell to carry out (persist a task or node, wake a runner's
long-poll). Only tasks that can still change are kept here; final ones live in the store.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping

from hakuriver.core import ahead
from hakuriver.core.attempts import close_attempt, note_late
from hakuriver.core.batches import BatchOutcomes
from hakuriver.core.cores import CoreSet
from hakuriver.core.depends import Dependencies
from hakuriver.core.events import (  # noqa: F401 - re-exported: the machine's vocabulary
    Effect,
    Finished,
    NodeChanged,
    NodeReport,
    Orders,
    OrdersReady,
    Started,
    SubmitRefused,
    TaskChanged,
    UnknownTask,
)
from hakuriver.core.model import Node, Task, split_run_key
from hakuriver.core.explain import why_pending
from hakuriver.core.invariants import check_invariants
from hakuriver.core.queue import RunQueue
from hakuriver.core.scheduler import Capacity, Request, plan
from hakuriver.core.states import RETRIED_STATES, NodeState, TaskState, check_transition


class Cluster:
    def __init__(self, heartbeat_timeout: float, ahead_wait: float = 0.0) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        #: seconds a task queued ahead may wait on its node for its core (core/ahead.py); 0 = queue nothing ahead
        self.ahead_wait = ahead_wait
        #: how long the recent tasks of each batch ran: which batches may be queued ahead
        self.short = ahead.ShortBatches()
        #: tasks queued ahead so far (a metric)
        self.queued_ahead_total = 0
        self.nodes: dict[str, Node] = {}
        #: every task that can still change, by ID
        self.tasks: dict[str, Task] = {}
        #: pending tasks free to run, in submission order (and tasks their throttle holds back)
        self.queue = RunQueue()
        #: each active task's place in submission order (the queue's order; a restart gives the same)
        self.rank: dict[str, int] = {}
        self._ranks_given = 0
        #: pending tasks waiting for others to complete (--after)
        self.deps = Dependencies()
        #: lost tasks by node, kept to take their real outcome when the node returns
        self.lost: dict[str, set[str]] = {}
        #: how each active batch stands, for --after a batch
        self.batches = BatchOutcomes()
        #: per throttled batch (--array RANGE%K), its tasks holding cores
        self.batch_running: dict[str, int] = {}

    # ---- restart -------------------------------------------------------------------------
    def restore(self, nodes: Iterable[Node], tasks: Iterable[Task], now: float,
                outcomes: Mapping[str, TaskState] | None = None) -> list[Effect]:
        """Rebuild from the store after a host restart.

        Nodes get a fresh heartbeat deadline: their runners have one timeout to reconnect
        before their tasks count as lost. `outcomes`: how the dependencies of pending tasks
        that are no longer active ended (see `on_submit`).
        """
        for node in nodes:
            node.last_heartbeat = now
            node.task_ids, node.queued = set(), {}
            node.cores = CoreSet(node.cores.all)  # ownership is rebuilt from the tasks below
            self.nodes[node.name] = node
        restored = sorted(tasks, key=lambda t: t.submitted_at)
        for task in restored:
            self._restore_task(task)
        effects: list[Effect] = []
        known = dict(outcomes or {})
        for task in restored:  # in submission order: every dependency before the tasks after it
            if task.state is TaskState.PENDING:
                effects += self._queue_or_wait(task, now, known)
                if task.state.is_final:  # its dependency failed: so does the task, for those after it
                    known[task.task_id] = task.state
        return effects

    def _restore_task(self, task: Task) -> None:
        self._add_task(task)
        if task.state.holds_cores:
            node = self.nodes.get(task.node)
            if node is not None and (node.cores.take_exact(task.core_ids) or self._queue_behind(task, node)):
                self._hold(task, node)
        elif task.state is TaskState.LOST:
            self.lost.setdefault(task.node, set()).add(task.task_id)

    # ---- client events -------------------------------------------------------------------
    def check_submit(self, tasks: list[Task], outcomes: Mapping[str, TaskState] | None = None) -> None:
        """Raise SubmitRefused if any of the tasks could never run here; changes nothing."""
        if not self.nodes:
            raise SubmitRefused("no runner has registered with the host yet; start hakuriver.runner on a node first")
        largest = max(self.nodes.values(), key=lambda n: n.total_cores)  # once per submission, not per task
        for task in tasks:
            self._check_fits(task, largest)
            for dep in task.after:
                self._dependency(dep, outcomes or {})

    def on_submit(self, tasks: list[Task], now: float = 0.0,
                  outcomes: Mapping[str, TaskState] | None = None) -> list[Effect]:
        """Queue tasks, all or none: a batch with one impossible task is refused whole.

        `outcomes` says how each --after ID that is not an active task or batch here ended
        (for a batch: completed, or the state of a task of it that did not complete); an ID
        that is neither active nor there is unknown, and refuses the submission.
        """
        self.check_submit(tasks, outcomes)
        effects: list[Effect] = []
        for task in tasks:
            self._add_task(task)
            effects.append(TaskChanged(task, created=True))
        for task in tasks:
            effects += self._queue_or_wait(task, now, outcomes or {})
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

    def _dependency(self, dep: str, outcomes: Mapping[str, TaskState]) -> TaskState | None:
        """How dependency `dep` stands: None while it may still complete, else its outcome."""
        outcome = outcomes.get(dep)
        if outcome is not None and outcome is not TaskState.COMPLETED:
            return outcome
        task = self.tasks.get(dep)
        if task is not None:
            return TaskState.LOST if task.state is TaskState.LOST else None
        if self.batches.active(dep):
            return self.batches.problem(dep)
        if outcome is None:
            raise SubmitRefused(f"--after: no task or batch with ID {dep}")
        return outcome

    def _queue_or_wait(self, task: Task, now: float, outcomes: Mapping[str, TaskState]) -> list[Effect]:
        unmet = []
        for dep in task.after:
            state = self._dependency(dep, outcomes)
            if state is None:
                unmet.append(dep)
            elif state is not TaskState.COMPLETED:
                return self._never_runs(task, now, f"dependency {dep} ended {state.value}")
        if unmet:
            self.deps.add(task.task_id, unmet)
        else:
            self._enqueue(task)
        return []

    def on_kill(self, task_id: str, now: float) -> list[Effect]:
        task = self.tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        if task.state is TaskState.PENDING:
            return self._never_runs(task, now, "killed by user before it started", TaskState.KILLED)
        if task.state is TaskState.LOST:  # final now; if its node comes back with it, it is a stray
            self.lost.get(task.node, set()).discard(task_id)
            return self._finish(task, TaskState.KILLED, now, error="killed by user while its node was unreachable")
        if task.kill_requested:
            return []
        task.kill_requested = True
        return [TaskChanged(task), OrdersReady(task.node)]

    # ---- runner events -------------------------------------------------------------------
    def on_heartbeat(self, report: NodeReport, held: set[str], now: float) -> list[Effect]:
        """A runner is alive and holds `held` (run keys of the attempts it runs or has results for)."""
        node = self.nodes.get(report.name)
        effects: list[Effect] = []
        if node is None:
            node = Node(report.name, CoreSet(report.core_ids), report.memory_bytes, NodeState.ONLINE, now,
                        queues_ahead=report.queues_ahead)
            self.nodes[node.name] = node
            return [NodeChanged(node)]
        node.last_heartbeat = now
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

    def _resize(self, node: Node, report: NodeReport) -> None:
        """A runner restarted with other cores; tasks still running on cores it no longer offers
        keep them until they end (retiring), so no core is handed out twice."""
        users = Counter(i for task_id in node.task_ids for i in self.tasks[task_id].core_ids)
        offered = set(report.core_ids)
        node.cores = CoreSet(offered | set(users))
        node.memory_bytes = report.memory_bytes
        node.cores.take_exact(users)
        node.queued = {core: n - 1 for core, n in users.items() if n > 1}
        node.cores.retire(set(users) - offered)

    def _recover_lost(self, node: Node, held: set[str], now: float, returning: bool) -> list[Effect]:
        """Lost tasks the node still holds are running again (their result follows). One it does
        not hold on the heartbeat that brings it back, and that never started, is queued again:
        its launch never reached the node (`held` counts launches under way too)."""
        effects: list[Effect] = []
        for task_id in sorted(self.lost.get(node.name, set())):
            task = self.tasks[task_id]
            if returning and task.run_key not in held and task.started_at is None:
                effects += self._run_again(task, node, now)
                continue
            if task.run_key not in held or not node.cores.take_exact(task.core_ids):
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
        self.batches.lost_is_back(task)
        self.lost[node.name].discard(task.task_id)
        check_transition(task.state, TaskState.PENDING)
        close_attempt(task, TaskState.LOST, now, f"{task.error}; it had not started there, and {node.name} came "
                                                 "back without it: queued again", delivered=False)
        self._enqueue(task)
        return [TaskChanged(task)]

    def orders_for(
        self, node_name: str, held: set[str], now: float, ending: frozenset[str] = frozenset()
    ) -> tuple[Orders, list[Effect]]:
        """What the node's runner should do next, given the attempts it holds and those already ending there."""
        node = self.nodes.get(node_name)
        orders, effects = Orders(), []
        if node is None or node.state is NodeState.OFFLINE:
            return orders, effects
        if node.queues_ahead and self.ahead_wait > 0:
            orders.wait_limit = self.ahead_wait
        # in queue order: the node keeps that order among the tasks queued behind one core
        for task_id in sorted(node.task_ids, key=self.rank.__getitem__):
            task = self.tasks[task_id]
            key = task.run_key
            if task.kill_requested and key in held:
                if key not in ending:
                    orders.kill.append(key)
            elif task.kill_requested and task.state is TaskState.ASSIGNING:
                # never delivered: nothing runs, so it is killed right here
                effects += self._finish(task, TaskState.KILLED, now, error="killed by user before it started")
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
            return self._handed_back(task, event.finished_at)
        if task.state is TaskState.LOST:
            self.lost.get(node_name, set()).discard(task.task_id)
        _note_start(task, event)
        if task.batch_id and task.started_at is not None and event.state is TaskState.COMPLETED:
            self.short.ran(task.batch_id, event.finished_at - task.started_at)
        task.exit_code, task.signal = event.exit_code, event.signal
        task.cpu_user_seconds, task.cpu_system_seconds = event.cpu_user_seconds, event.cpu_system_seconds
        task.max_rss_bytes = event.max_rss_bytes
        return self._end_attempt(task, event.state, event.finished_at, event.error)

    def _handed_back(self, task: Task, now: float) -> list[Effect]:
        """Queued ahead, the task waited too long for its core there and never ran: back to the
        queue in its place, the same attempt (it was not one), its batch no longer queued ahead."""
        if task.state not in (TaskState.ASSIGNING, TaskState.RUNNING, TaskState.LOST):
            return []
        self.short.returned(task.batch_id)
        if task.kill_requested:
            return self._finish(task, TaskState.KILLED, now, error="killed by user before it started")
        if task.state is TaskState.LOST:
            self.lost.get(task.node, set()).discard(task.task_id)
            self.batches.lost_is_back(task)
        check_transition(task.state, TaskState.PENDING)
        effects = [TaskChanged(task), *self._release(task)]
        task.state, task.node, task.core_ids = TaskState.PENDING, "", ()
        task.started_at, task.error = None, ""
        self._enqueue(task)
        return effects

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
        for placement in plan(requests, online, self.batch_running):
            task = self.tasks[placement.task_id]
            node = self.nodes[placement.node]
            self.queue.remove(task.task_id)
            check_transition(task.state, TaskState.ASSIGNING)
            task.state, task.node = TaskState.ASSIGNING, node.name
            task.core_ids = node.cores.take(task.cores)
            self._hold(task, node)
            effects.append(TaskChanged(task))
            woken.add(node.name)
        effects += self._queue_ahead(woken)
        effects += [OrdersReady(name) for name in sorted(woken)]
        return effects

    def _queue_ahead(self, woken: set[str]) -> list[Effect]:
        """Queue the short batch tasks at the head of the queue behind busy cores (core/ahead.py).

        Runs after placement on free cores, so only when no free core is left for them; stops
        at the first task that may not wait, which therefore keeps its place at the head.
        """
        if self.ahead_wait <= 0 or not self.queue:
            return []
        head = self.tasks[next(iter(self.queue))]
        if not ahead.may_wait(head, self.short):
            return []
        slots = ahead.open_slots(n for n in self.nodes.values() if n.queues_ahead and n.state is NodeState.ONLINE)
        picked: list[Task] = []
        room = ahead.room(slots)
        for task_id in self.queue:
            task = self.tasks[task_id]
            if len(picked) == room or not ahead.may_wait(task, self.short):
                break
            picked.append(task)
        effects: list[Effect] = []
        for task in picked:
            queued, name, core = heapq.heappop(slots)
            node = self.nodes[name]
            self.queue.remove(task.task_id)
            check_transition(task.state, TaskState.ASSIGNING)
            task.state, task.node, task.core_ids = TaskState.ASSIGNING, name, (core,)
            node.queued[core] = queued + 1
            self._hold(task, node)
            if queued + 1 < ahead.DEPTH:
                heapq.heappush(slots, (queued + 1, name, core))
            effects.append(TaskChanged(task))
            woken.add(name)
        self.queued_ahead_total += len(picked)
        return effects

    def _request(self, task_id: str) -> Request:
        task = self.tasks[task_id]
        return Request(task_id, task.cores, task.target_node, task.batch_id, task.throttle)

    def why_pending(self, task_id: str) -> str:
        """One line on what a pending task waits for ("" if it is not pending)."""
        return why_pending(self, task_id)

    # ---- shared steps --------------------------------------------------------------------
    def _add_task(self, task: Task) -> None:
        self.tasks[task.task_id] = task
        self._ranks_given += 1
        self.rank[task.task_id] = self._ranks_given
        self.batches.add(task)

    def _enqueue(self, task: Task) -> None:
        self.queue.add(task.task_id, self.rank[task.task_id], task.batch_id, task.throttle,
                       self.batch_running.get(task.batch_id, 0))

    def _hold(self, task: Task, node: Node) -> None:
        node.task_ids.add(task.task_id)
        if task.throttle:
            self.batch_running[task.batch_id] = self.batch_running.get(task.batch_id, 0) + 1

    def _release(self, task: Task) -> list[Effect]:
        """Give back the cores the task holds, if it holds any."""
        node = self.nodes.get(task.node)
        if node is None or task.task_id not in node.task_ids:
            return []
        node.task_ids.discard(task.task_id)
        if task.throttle:
            self.batch_running[task.batch_id] -= 1
            if not self.batch_running[task.batch_id]:
                del self.batch_running[task.batch_id]
            self.queue.admit(task.batch_id, task.throttle, self.batch_running.get(task.batch_id, 0))
        total = node.total_cores
        node.cores.give_back(self._vacate(node, task.core_ids))
        return [NodeChanged(node)] if node.total_cores != total else []  # it held cores its node no longer offers

    def _queue_behind(self, task: Task, node: Node) -> bool:
        """Restoring a one-core task whose core another task uses: it was queued ahead behind it."""
        if len(task.core_ids) != 1 or task.core_ids[0] not in node.cores.offered:
            return False
        core = task.core_ids[0]
        node.queued[core] = node.queued.get(core, 0) + 1
        return True

    @staticmethod
    def _vacate(node: Node, core_ids: tuple[int, ...]) -> list[int]:
        """A task leaves these cores: those with a task queued behind stay taken (by it); the rest are free."""
        free = []
        for core in core_ids:
            behind = node.queued.get(core, 0)
            if behind > 1:
                node.queued[core] = behind - 1
            elif behind:
                del node.queued[core]
            else:
                free.append(core)
        return free

    def _reclaim(self, task: Task) -> bool:
        node = self.nodes[task.node]
        if not node.cores.take_exact(task.core_ids):
            return False
        self.lost.get(node.name, set()).discard(task.task_id)
        self._hold(task, node)
        self.batches.lost_is_back(task)
        return True

    def _end_attempt(self, task: Task, state: TaskState, now: float, error: str) -> list[Effect]:
        """The current attempt ended in `state`: the task ends so too, or, with retries left, goes back to the queue."""
        if state not in RETRIED_STATES or task.retries_used >= task.retries or task.kill_requested:
            if state is TaskState.LOST:
                self.lost.setdefault(task.node, set()).add(task.task_id)
            return self._finish(task, state, now, error=error)
        check_transition(task.state, TaskState.PENDING)
        effects = [TaskChanged(task), *self._release(task)]
        close_attempt(task, state, now, error)
        self._enqueue(task)  # in its place by submission (RunQueue), not at the back
        return effects

    def _never_runs(self, task: Task, now: float, error: str, state: TaskState = TaskState.FAILED) -> list[Effect]:
        """A pending task ends without running (killed, or a dependency did not complete)."""
        self.queue.remove(task.task_id)
        if task.throttle:
            self.queue.admit(task.batch_id, task.throttle, self.batch_running.get(task.batch_id, 0))
        self.deps.drop(task.task_id)
        return self._finish(task, state, now, error=error)

    def _finish(self, task: Task, state: TaskState, now: float, error: str = "") -> list[Effect]:
        return self._close(task, state, now, error) + self._dependents_of(task, state, now)

    def _close(self, task: Task, state: TaskState, now: float, error: str) -> list[Effect]:
        check_transition(task.state, state)
        effects: list[Effect] = [TaskChanged(task), *self._release(task)]
        task.state = state
        task.finished_at = now
        task.error = error
        if state is not TaskState.LOST:
            del self.tasks[task.task_id]
            del self.rank[task.task_id]
        return effects

    def _dependents_of(self, task: Task, state: TaskState, now: float) -> list[Effect]:
        """Settle what waited on this task, or on its batch, now that it ended in `state`.

        Each failure may cascade down a chain: its own dependents fail in turn. A work list,
        not recursion, so that a chain of any length fails whole (not half, then RecursionError).
        """
        effects: list[Effect] = []
        work = [(task, state)]
        for ended_task, ended_state in work:  # grows while the loop runs
            for dep, how in self._ended_ids(ended_task, ended_state):
                if how is TaskState.COMPLETED:
                    for ready in self.deps.completed(dep):
                        self._enqueue(self.tasks[ready])
                    continue
                for doomed in self.deps.ended_badly(dep):
                    failed = self.tasks[doomed]
                    effects += self._close(failed, TaskState.FAILED, now, f"dependency {dep} ended {how.value}")
                    work.append((failed, TaskState.FAILED))
        return effects

    def _ended_ids(self, task: Task, state: TaskState) -> list[tuple[str, TaskState]]:
        """The task's ID and, if its batch's outcome is decided with it, its batch's."""
        batch_outcome = self.batches.ended(task, state)
        return [(task.task_id, state)] + ([(task.batch_id, batch_outcome)] if batch_outcome else [])

    # ---- checks --------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is broken (see invariants.py); for tests."""
        check_invariants(self)


def _note_start(task: Task, event: Started | Finished) -> None:
    """Where, when and as whom the attempt ran, from its start report or (a short task) its finish."""
    if event.started_at is not None and (task.started_at is None or isinstance(event, Started)):
        task.started_at = event.started_at
    if event.stdout_path:
        task.stdout_path, task.stderr_path = event.stdout_path, event.stderr_path
    if event.unix_user:
        task.unix_user = event.unix_user
