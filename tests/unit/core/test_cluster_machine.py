"""Random event sequences through the pure `Cluster`, with its invariants checked after every step.

Hypothesis drives a `Cluster` the way the host's shell does: runners register and heartbeat,
clients submit and kill, the scheduler places tasks, runners take orders and report, ticks send
silent nodes offline, nodes come back with or without their lost tasks, and the host restarts
from what it persisted. Time is an argument everywhere: the machine keeps its own clock.

The simulated runners behave like real ones: they only report on tasks they were ordered to
launch, report each start and each result once, hold a task until its result is delivered, and
obey kill orders. A small store is kept from the effects alone, as HostService saves them, and a
host restart restores a fresh `Cluster` from copies of it, as HostService.restore does.

Why: the example tests in test_cluster.py pin single paths; the guarantees (disjoint core sets,
one lifecycle per task, nothing lost across a restart) must hold on every interleaving.
Checked after every step, beyond `Cluster.check_invariants()`:

- each task's states, as its effects show them, follow `TRANSITIONS`; a task that ended other
  than lost never changes again, and no state changes without an effect;
- every in-memory record equals its stored copy: the effects name every change to persist;
- no task in a final state other than lost stays in memory, every lost task is remembered for
  its node's return, no task is both queued and on a node, and the queue keeps submission order.

Each rule also checks its own outcome: a refusal is predicted and changes nothing, a tick sends
every silent node offline, the head of the queue never waits while it fits, orders go only to
online nodes and never relaunch what the runner holds, a result finalises the task it names, a
restart keeps the queue and the active tasks.

The machine found three core bugs (a start report reclaiming a lost task onto an offline node,
a shrinking node double-booking cores, a kill forgotten across a host restart); each is pinned
by a minimal reproduction at the end of the file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hakuriver.core.cluster import (
    Cluster,
    Finished,
    NodeChanged,
    NodeReport,
    Started,
    SubmitRefused,
    TaskChanged,
    UnknownTask,
)
from hakuriver.core.model import Node, Task
from hakuriver.core.states import TRANSITIONS, NodeState, TaskState

T = TypeVar("T")
TIMEOUT = 30.0
NODES = ("a", "b", "c")
ACTIVE = frozenset({TaskState.PENDING, TaskState.ASSIGNING, TaskState.RUNNING, TaskState.LOST})
#: how a process can end on its own: (exit_code, signal, error)
OUTCOMES = {
    "ok": (0, None, ""),
    "fail": (3, None, ""),
    "signal": (None, 9, "killed by signal 9"),
    "no-start": (None, None, "command not found"),
}
pick = st.integers(0, 1000)
cores = st.integers(1, 8)
#: mostly small tasks, so that several share a node
task_cores = st.one_of(st.integers(1, 2), cores)
#: mostly any node, sometimes a named one, rarely one that does not exist
target = st.sampled_from(("",) * 6 + NODES + ("zz",))
#: mostly less than a heartbeat interval, sometimes past the timeout
short = st.integers(0, 3)
pause = st.one_of(short, short, short, st.sampled_from([TIMEOUT, TIMEOUT + 0.5]), st.integers(0, 3 * int(TIMEOUT)))


@dataclass
class Runner:
    """A simulated runner: the tasks it holds (launched, or ended with the result not yet delivered)."""

    cores: int
    #: launched and not yet ended, with the order as it came over the wire
    running: dict[str, Task] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    killing: set[str] = field(default_factory=set)
    #: ended, result not yet delivered (the outbox)
    results: dict[str, Finished] = field(default_factory=dict)

    def held(self) -> set[str]:
        return set(self.running) | set(self.results)

    def ending(self) -> frozenset[str]:
        return frozenset(self.killing | set(self.results))

    def forget(self) -> None:
        """The machine rebooted: every process and undelivered result is gone."""
        self.running, self.started, self.killing, self.results = {}, set(), set(), {}


def chosen(options: list[T], i: int) -> T:
    """The i-th option, wrapping around: rules draw an index, the state says what it picks from."""
    return sorted(options)[i % len(options)]


def expected_state(ev: Finished) -> TaskState:
    if ev.killed:
        return TaskState.KILLED
    return TaskState.COMPLETED if ev.exit_code == 0 and not ev.error else TaskState.FAILED


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.cluster = Cluster(TIMEOUT)
        self.runners: dict[str, Runner] = {}
        #: what the host would have persisted, from the effects alone
        self.store_tasks: dict[str, Task] = {}
        self.store_nodes: dict[str, Node] = {}
        #: every task ever accepted (the newest incarnation after a restart) and its states seen
        self.live: dict[str, Task] = {}
        self.history: dict[str, list[TaskState]] = {}
        self.submitted: dict[str, int] = {}
        self.next_id = 0

    # ---- effects -------------------------------------------------------------------------
    def apply(self, effects: list) -> None:
        for e in effects:
            if isinstance(e, TaskChanged):
                self.saw(e)
            elif isinstance(e, NodeChanged):
                self.store_nodes[e.node.name] = copy.deepcopy(e.node)

    def saw(self, e: TaskChanged) -> None:
        tid, state = e.task.task_id, e.task.state
        seen = self.history.setdefault(tid, [])
        if e.created:
            assert not seen and state is TaskState.PENDING, f"{tid} created twice or not pending"
        else:
            assert seen, f"{tid} changed before it was created"
            last = seen[-1]
            assert last in ACTIVE, f"{tid} changed after it ended {last.value}"
            assert state is last or state in TRANSITIONS[last], f"{tid}: {last.value} -> {state.value}"
        seen.append(state)
        self.store_tasks[tid] = copy.deepcopy(e.task)
        self.live[tid] = e.task

    # ---- helpers -------------------------------------------------------------------------
    def heartbeat(self, name: str) -> None:
        r = self.runners[name]
        report = NodeReport(name, tuple(range(r.cores)))
        self.apply(self.cluster.on_heartbeat(report, r.held(), self.now))
        node = self.cluster.nodes[name]
        assert node.state is NodeState.ONLINE and node.last_heartbeat == self.now

    def new_task(self, n_cores: int, target: str) -> Task:
        self.next_id += 1
        tid = f"t{self.next_id}"
        return Task(task_id=tid, command="true", args=[tid], env={}, cores=n_cores, submitted_at=self.now, target_node=target)

    def would_refuse(self, tasks: list[Task]) -> bool:
        totals = {name: node.total_cores for name, node in self.cluster.nodes.items()}
        biggest = max(totals.values(), default=0)
        return any(t.cores > (totals.get(t.target_node, 0) if t.target_node else biggest) for t in tasks)

    def snapshot(self) -> tuple:
        nodes = tuple((n.name, n.cores.free_ids(), frozenset(n.task_ids), n.state) for n in self.cluster.nodes.values())
        return tuple(self.cluster.tasks), tuple(self.cluster.queue), nodes

    def eligible(self, task: Task) -> list[Node]:
        online = [n for n in self.cluster.nodes.values() if n.state is NodeState.ONLINE]
        return [n for n in online if not task.target_node or n.name == task.target_node]

    def runner_tasks(self, attr: str) -> list[tuple[str, str]]:
        return [(name, tid) for name, r in self.runners.items() for tid in getattr(r, attr)]

    def unreported(self) -> list[tuple[str, str]]:
        unstarted = [(name, tid) for name, tid in self.runner_tasks("running") if tid not in self.runners[name].started]
        return unstarted + self.runner_tasks("results")

    def offline_runners(self) -> list[str]:
        return [name for name in self.runners if self.cluster.nodes[name].state is NodeState.OFFLINE]

    # ---- time ----------------------------------------------------------------------------
    @rule(dt=pause, then_tick=st.booleans())
    def advance(self, dt: float, then_tick: bool) -> None:
        """Time passes, and the host's periodic tick may run at its end."""
        self.now += dt
        if then_tick:
            self.tick()

    @rule()
    def tick(self) -> None:
        self.apply(self.cluster.on_tick(self.now))
        for node in self.cluster.nodes.values():
            if self.now - node.last_heartbeat > TIMEOUT:
                assert node.state is NodeState.OFFLINE, f"{node.name} silent but online"

    # ---- runners -------------------------------------------------------------------------
    @initialize(sizes=st.lists(cores, min_size=1, max_size=len(NODES)))
    def register_nodes(self, sizes: list[int]) -> None:
        for name, n_cores in zip(NODES, sizes):
            self.register_or_heartbeat(name, n_cores, poll=False)

    @rule(name=st.sampled_from(NODES), n_cores=cores, poll=st.booleans())
    def register_or_heartbeat(self, name: str, n_cores: int, poll: bool) -> None:
        """Most heartbeats are long-polls that come back with orders, as HostService.heartbeat does."""
        self.runners.setdefault(name, Runner(n_cores))
        self.heartbeat(name)
        if poll:
            self.take_orders(name)

    @precondition(lambda self: self.offline_runners())
    @rule(i=pick, keep=st.booleans())
    def node_returns(self, i: int, keep: bool) -> None:
        name = chosen(self.offline_runners(), i)
        if not keep:
            self.runners[name].forget()
        self.heartbeat(name)

    @precondition(lambda self: self.runners)
    @rule(i=pick, n_cores=cores)
    def runner_resizes(self, i: int, n_cores: int) -> None:
        """The runner restarts with another core count; its keeper keeps its tasks running."""
        name = chosen(list(self.runners), i)
        self.runners[name].cores = n_cores
        self.heartbeat(name)

    @rule(name=st.sampled_from(NODES))
    def orders(self, name: str) -> None:
        self.take_orders(name)

    def take_orders(self, name: str) -> None:
        r = self.runners.get(name, Runner(1))
        held, ending = r.held(), r.ending()
        orders, effects = self.cluster.orders_for(name, held, self.now, ending)
        self.apply(effects)
        orders.kill += self.cluster.strays(name, held, ending)
        node = self.cluster.nodes.get(name)
        assert not orders or (node is not None and node.state is NodeState.ONLINE), f"orders for offline {name}"
        assert len(set(orders.kill)) == len(orders.kill), f"repeated kill orders {orders.kill}"
        for task in orders.launch:
            assert task.task_id not in held, f"{task.task_id} launched again on {name}"
            assert task.state is TaskState.ASSIGNING and task.node == name, f"{task.task_id} launched as {task.state.value}"
            assert set(task.core_ids) <= set(node.cores.all), f"{task.task_id} given cores {task.core_ids} not on {name}"
            r.running[task.task_id] = copy.deepcopy(task)
        for tid in orders.kill:
            assert tid in held and tid not in ending, f"kill order for {tid}, not held or already ending"
            r.killing.add(tid)
        if node is not None and node.state is NodeState.ONLINE:
            killed = {tid for tid in held - ending if self.history[tid][-1] is TaskState.KILLED}
            assert killed <= r.killing, f"{sorted(killed - r.killing)} killed by the user but left running on {name}"

    @precondition(lambda self: self.unreported())
    @rule(i=pick)
    def report_one(self, i: int) -> None:
        """One start or one result that a runner has not yet told the host gets through."""
        name, tid = chosen(self.unreported(), i)
        if tid in self.runners[name].results:
            self.report_finished(name, tid)
        else:
            self.report_started(name, tid)

    def report_started(self, name: str, tid: str) -> None:
        self.runners[name].started.add(tid)
        task = self.cluster.tasks.get(tid)
        before = task.state if task is not None and task.node == name else None
        self.apply(self.cluster.on_started(name, Started(tid, self.now, f"/out/{tid}", f"/err/{tid}")))
        if before is TaskState.ASSIGNING:
            assert task.state is TaskState.RUNNING, f"{tid} started but {task.state.value}"
        elif before is TaskState.LOST:
            assert task.state in (TaskState.RUNNING, TaskState.LOST), f"lost {tid} started but {task.state.value}"

    @precondition(lambda self: self.runner_tasks("running"))
    @rule(i=pick, outcome=st.sampled_from(list(OUTCOMES)), deliver=st.booleans())
    def process_exits(self, i: int, outcome: str, deliver: bool) -> None:
        """A process ends, started or not; its result is sent at once or waits in the outbox."""
        name, tid = chosen(self.runner_tasks("running"), i)
        self.process_ends(name, tid, outcome)
        if deliver:
            self.report_finished(name, tid)

    def process_ends(self, name: str, tid: str, outcome: str) -> None:
        r = self.runners[name]
        r.running.pop(tid)
        code, sig, error = (None, 15, "killed by user") if tid in r.killing else OUTCOMES[outcome]
        began = self.now if tid in r.started or outcome != "no-start" else None
        r.results[tid] = Finished(tid, self.now, code, sig, error, killed=tid in r.killing, started_at=began)
        r.killing.discard(tid)

    def report_finished(self, name: str, tid: str) -> None:
        event = self.runners[name].results.pop(tid)
        task = self.cluster.tasks.get(tid)
        ours = task is not None and task.node == name
        self.apply(self.cluster.on_finished(name, event))
        if ours:
            assert tid not in self.cluster.tasks, f"{tid} still active after its result"
            assert self.history[tid][-1] is expected_state(event), f"{tid} ended {self.history[tid][-1].value}"

    @precondition(lambda self: self.runners)
    @rule(i=pick)
    def runner_reports(self, i: int) -> None:
        """A report with every start and result the runner has, answered with orders (HostService.report)."""
        name = chosen(list(self.runners), i)
        r = self.runners[name]
        for tid in sorted(set(r.running) - r.started):
            self.report_started(name, tid)
        for tid in sorted(r.results):
            self.report_finished(name, tid)
        self.take_orders(name)

    # ---- clients and scheduling ----------------------------------------------------------
    @rule(specs=st.lists(st.tuples(task_cores, target), min_size=1, max_size=5), then_schedule=st.booleans())
    def submit(self, specs: list[tuple[int, str]], then_schedule: bool) -> None:
        """A client submits; the host usually schedules right away (HostService.submit)."""
        self.submit_tasks(specs)
        if then_schedule:
            self.schedule()

    def submit_tasks(self, specs: list[tuple[int, str]]) -> None:
        tasks = [self.new_task(n, target) for n, target in specs]
        refuse, before = self.would_refuse(tasks), self.snapshot()
        try:
            effects = self.cluster.on_submit(tasks)
        except SubmitRefused:
            assert refuse, "refused a batch that fits"
            assert self.snapshot() == before, "a refused submission changed the cluster"
            return
        assert not refuse, "accepted a batch that can never run"
        for t in tasks:
            self.submitted[t.task_id] = len(self.submitted)
        self.apply(effects)

    @rule()
    def schedule(self) -> None:
        self.apply(self.cluster.schedule())
        if self.cluster.queue:
            head = self.cluster.tasks[next(iter(self.cluster.queue))]
            for node in self.eligible(head):
                assert node.free_cores < head.cores, f"head {head.task_id} fits on {node.name} but waits"

    @rule(i=pick, active=st.booleans())
    def kill(self, i: int, active: bool) -> None:
        """Kill an active task, or any task ever submitted, or one that never was."""
        tid = chosen(list(self.cluster.tasks) if active and self.cluster.tasks else [*self.history, "nope"], i)
        task = self.cluster.tasks.get(tid)
        before = task.state if task is not None else None
        try:
            effects = self.cluster.on_kill(tid, self.now)
        except UnknownTask:
            assert task is None, f"{tid} is {before.value} but kill says unknown"
            return
        assert task is not None, f"killed {tid}, which is not active"
        self.apply(effects)
        if before in (TaskState.PENDING, TaskState.LOST):
            assert self.history[tid][-1] is TaskState.KILLED and tid not in self.cluster.tasks
        else:
            assert task.kill_requested and tid in self.cluster.tasks

    # ---- host restart --------------------------------------------------------------------
    @rule()
    def simulate_host_restart(self) -> None:
        old = self.cluster
        active = [t for t in self.store_tasks.values() if t.state in ACTIVE]
        self.cluster = Cluster(TIMEOUT)
        self.cluster.restore(copy.deepcopy(list(self.store_nodes.values())), copy.deepcopy(active), self.now)
        self.live.update(self.cluster.tasks)
        assert list(self.cluster.queue) == list(old.queue), "queue order changed across a restart"
        assert set(self.cluster.tasks) == set(old.tasks), "active tasks changed across a restart"

    # ---- invariants ----------------------------------------------------------------------
    @invariant()
    def cluster_invariants(self) -> None:
        self.cluster.check_invariants()

    @invariant()
    def no_state_change_without_an_effect(self) -> None:
        for tid, task in self.live.items():
            assert task.state is self.history[tid][-1], f"{tid} became {task.state.value} without an effect"

    @invariant()
    def memory_matches_the_store(self) -> None:
        for tid, task in self.cluster.tasks.items():
            assert task == self.store_tasks[tid], f"{tid} changed without an effect"
        for name, node in self.cluster.nodes.items():
            stored = self.store_nodes[name]
            current, saved = (node.cores.all, node.memory_bytes, node.state), (stored.cores.all, stored.memory_bytes, stored.state)
            assert current == saved, f"node {name} changed without an effect"

    @invariant()
    def only_active_tasks_in_memory(self) -> None:
        for tid, task in self.cluster.tasks.items():
            assert task.state in ACTIVE, f"{tid} is {task.state.value} but still in memory"
        lost = {tid for tid, t in self.cluster.tasks.items() if t.state is TaskState.LOST}
        remembered = {(node, tid) for node, ids in self.cluster.lost.items() for tid in ids}
        assert remembered == {(self.cluster.tasks[tid].node, tid) for tid in lost}, "lost tasks not remembered by node"

    @invariant()
    def offline_nodes_hold_nothing(self) -> None:
        """Nothing would ever time out a task there: on_tick only looks at online nodes."""
        for node in self.cluster.nodes.values():
            assert node.state is NodeState.ONLINE or not node.task_ids, f"offline {node.name} holds {sorted(node.task_ids)}"

    @invariant()
    def queue_apart_from_nodes_and_in_order(self) -> None:
        on_nodes = set().union(*(n.task_ids for n in self.cluster.nodes.values()))
        assert not on_nodes & set(self.cluster.queue), f"{sorted(on_nodes & set(self.cluster.queue))} queued and placed"
        order = [self.submitted[tid] for tid in self.cluster.queue]
        assert order == sorted(order), "queue out of submission order"


TestClusterMachine = ClusterMachine.TestCase
TestClusterMachine.settings = settings(max_examples=500, stateful_step_count=50, deadline=None)


# ---- what the machine found, as minimal reproductions -------------------------
def one_task_on(node: str, cores: int, task_cores: int = 1) -> Cluster:
    c = Cluster(TIMEOUT)
    c.on_heartbeat(NodeReport(node, tuple(range(cores))), set(), now=0.0)
    c.on_submit([Task(task_id="t1", command="true", args=[], env={}, cores=task_cores, submitted_at=0.0)])
    c.schedule()
    return c


def test_a_start_report_from_an_offline_node_leaves_a_task_nothing_times_out():
    c = one_task_on("a", 1)
    c.on_tick(now=31)  # a goes offline, t1 is lost
    c.on_started("a", Started("t1", 32))  # a report got through; the heartbeats do not
    c.on_tick(now=10_000)
    node = c.nodes["a"]
    assert node.state is NodeState.ONLINE or not node.task_ids, f"{sorted(node.task_ids)} run on offline a, never lost"


def test_a_node_that_shrinks_under_a_running_task_double_books_its_cores():
    c = one_task_on("a", 2, task_cores=2)  # t1 holds cores 0 and 1
    c.on_heartbeat(NodeReport("a", (0,)), {"t1"}, now=1)  # the runner restarted with 1 core; t1 runs on
    c.on_submit([Task(task_id="t2", command="true", args=[], env={}, cores=1, submitted_at=1.0)])
    c.schedule()
    taken = [i for t in c.tasks.values() if t.state.holds_cores for i in t.core_ids]
    assert len(taken) == len(set(taken)), f"core IDs {sorted(taken)} handed out twice"
    c.check_invariants()


def test_a_task_killed_while_lost_is_still_killed_when_its_node_returns_after_a_host_restart():
    c = one_task_on("a", 1)
    c.orders_for("a", set(), now=0)  # the runner launches t1
    c.on_tick(now=31)
    c.on_kill("t1", now=32)  # killed while lost: final, to be killed if a comes back with it
    fresh = Cluster(TIMEOUT)
    fresh.restore(copy.deepcopy(list(c.nodes.values())), [], now=40)  # no active task left to store
    fresh.on_heartbeat(NodeReport("a", (0,)), {"t1"}, now=41)
    assert fresh.strays("a", {"t1"}, frozenset()) == ["t1"], "t1 runs on, on a core the host hands out again"
