"""The state machine of the whole cluster: events in, records changed, effects out.

Each `on_*` method takes the current time as an argument, changes the in-memory records, and
returns effects for the host's shell to carry out (persist a task or node, wake a runner's
long-poll). Only tasks that can still change are kept here; final ones live in the store.
What the runners say (heartbeats, starts, results, silence) is handled in runner_events.py, the
other half of the class; work queued on a node ahead of its free cores is core/ahead.py's.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping

from hakuriver.core import ahead
from hakuriver.core.attempts import close_attempt
from hakuriver.core.batches import BatchOutcomes
from hakuriver.core.cores import CoreQueues, CoreSet
from hakuriver.core.depends import Dependencies
from hakuriver.core.events import (  # noqa: F401 - re-exported: the machine's vocabulary
    Effect,
    Finished,
    NodeChanged,
    NodeReport,
    NodeTaken,
    Orders,
    OrdersReady,
    Started,
    SubmitRefused,
    TaskChanged,
    UnknownTask,
)
from hakuriver.core.model import Node, Task
from hakuriver.core.explain import why_pending
from hakuriver.core.invariants import check_invariants
from hakuriver.core.queue import RunQueue
from hakuriver.core.runner_events import RunnerEvents
from hakuriver.core.scheduler import Capacity, Request, plan
from hakuriver.core.states import RETRIED_STATES, NodeState, TaskState, check_transition


class Cluster(RunnerEvents):
    def __init__(self, heartbeat_timeout: float, ahead_wait: float = 0.0) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        #: seconds a task queued ahead may wait on its node for its core (core/ahead.py); 0 = queue nothing ahead
        self.ahead_wait = ahead_wait
        #: how long the recent tasks of each batch ran: which batches may be queued ahead
        self.short = ahead.ShortBatches()
        #: tasks queued ahead so far, and those of them handed back unrun (metrics)
        self.queued_ahead_total = 0
        self.handed_back_total = 0
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
            node.task_ids = set()
            self.nodes[node.name] = node
        restored = sorted(tasks, key=lambda t: t.submitted_at)
        for task in restored:
            self._add_task(task)
            if task.state is TaskState.LOST:
                self.lost.setdefault(task.node, set()).add(task.task_id)
        holding: dict[str, list[Task]] = {}
        for task in restored:
            node = self.nodes.get(task.node)
            if task.state.holds_cores and node is not None and set(task.core_ids) <= set(node.cores.all):
                holding.setdefault(node.name, []).append(task)
        for node in self.nodes.values():
            self._occupy(node, CoreSet(node.cores.all), holding.get(node.name, []))
            node.queues_ahead = node.queued.total > 0  # its keeper queued ahead before: it can (its heartbeat says anew)
        effects: list[Effect] = []
        known = dict(outcomes or {})
        for task in restored:  # in submission order: every dependency before the tasks after it
            if task.state is TaskState.PENDING:
                effects += self._queue_or_wait(task, now, known)
                if task.state.is_final:  # its dependency failed: so does the task, for those after it
                    known[task.task_id] = task.state
        return effects

    def _occupy(self, node: Node, cores: CoreSet, tasks: list[Task]) -> None:
        """Give the node these cores, held by these tasks: a core used by several has all but one
        of them queued ahead behind it (a restart, a runner back with other cores)."""
        users = Counter(core for task in tasks for core in task.core_ids)
        cores.take_exact(users)
        node.cores, node.queued = cores, CoreQueues({core: n - 1 for core, n in users.items()})
        for task in tasks:
            if task.task_id not in node.task_ids:
                self._hold(task, node)

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

    # ---- scheduling ----------------------------------------------------------------------
    def schedule(self) -> list[Effect]:
        """Place queued tasks on online nodes and pick their exact core IDs."""
        if not self.queue:
            return []
        online = [
            Capacity(n.name, n.free_cores, n.total_cores)
            for n in self.nodes.values()
            if n.state is NodeState.ONLINE and not n.leaving
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
        nodes = (n for n in self.nodes.values() if n.queues_ahead and n.state is NodeState.ONLINE and not n.leaving)
        slots = ahead.open_slots(nodes, self.tasks, self.short, self.short.depth(head.batch_id, self.ahead_wait))
        room = {name: ahead.NODE_DEPTH - self.nodes[name].queued.total for _, name, _ in slots}
        picked: list[tuple[Task, str, int]] = []
        for task_id in self.queue:  # in queue order, until one may not wait or finds no room
            task = self.tasks[task_id]
            if not ahead.may_wait(task, self.short):
                break
            while slots and room[slots[0][1]] <= 0:  # that node holds all it may
                heapq.heappop(slots)
            # (the least queued core holds enough of this batch's work already: so do the others)
            if not slots or slots[0][0] >= self.short.depth(task.batch_id, self.ahead_wait):
                break
            queued, name, core = heapq.heappop(slots)
            picked.append((task, name, core))
            room[name] -= 1
            if queued + 1 < ahead.DEPTH:  # (a deeper batch behind this one may still use it)
                heapq.heappush(slots, (queued + 1, name, core))
        effects: list[Effect] = []
        for task, name, core in picked:
            node = self.nodes[name]
            self.queue.remove(task.task_id)
            check_transition(task.state, TaskState.ASSIGNING)
            task.state, task.node, task.core_ids = TaskState.ASSIGNING, name, (core,)
            node.queued.add(core)
            self._hold(task, node)
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

    @staticmethod
    def _vacate(node: Node, core_ids: tuple[int, ...]) -> list[int]:
        """A task leaves these cores: those with a task queued behind stay taken (by it); the rest are free."""
        return [core for core in core_ids if not node.queued.leave(core)]

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
