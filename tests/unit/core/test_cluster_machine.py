"""Random event sequences through the pure `Cluster`, with its invariants checked after every step.

Hypothesis drives a `Cluster` the way the host's shell does: runners register and heartbeat,
clients submit and kill, the scheduler places tasks, runners take orders and report, ticks send
silent nodes offline (all of them, or one while the others keep answering), nodes come back with
or without their lost tasks, and the host restarts from what it persisted. Time is an argument
everywhere: the machine keeps its own clock.

Submissions sometimes carry retries, --after (tasks or batches the machine knows, active or
final, and now and then an ID nobody knows) and a throttle on a batch. The host's part is played
as HostService does it: each --after ID that is not an active task gets its outcome from the
stored records (a batch: a problem state if a task of it ended in one, else completed), on
submission and on a host restart alike.

The simulated runners behave like real ones: they hold attempts by run key, only report on
attempts they were ordered to launch, report each start and each result once with its attempt
number (a result may come a second time, its acknowledgement lost), hold an attempt until its
result is delivered, and obey kill orders, strays included. Some processes run out of their time
limit. A node that comes back after being offline may still run an attempt the host has retried
elsewhere meanwhile; its late result must only touch the task's history. A small store is kept
from the effects alone, as HostService saves them, and a host restart restores a fresh `Cluster`
from copies of it, as HostService.restore does.

Why: the example tests in test_cluster.py and test_control.py pin single paths; the guarantees
(disjoint core sets, one lifecycle per task, nothing lost across a restart, one live attempt,
dependencies and throttles honoured) must hold on every interleaving.
Checked after every step, beyond `Cluster.check_invariants()`:

- each task's states, as its effects show them, follow `TRANSITIONS`; a task that ended other
  than lost never changes again, and no state changes without an effect;
- every in-memory record equals its stored copy: the effects name every change to persist;
- no task in a final state other than lost stays in memory, every lost task is remembered for
  its node's return, no task is both queued and on a node, and the queue keeps submission order;
- attempt numbers only grow, never past 1 + retries but for attempts whose launch never reached
  their node (lost before they started, the node back without them: queued again, uncounted),
  and a task lists every earlier attempt, numbered 1 to attempt - 1;
- no task has two live attempts (launched, not being killed) on online nodes, and each live
  attempt there is the current attempt of an active task placed on that node. The core cannot
  promise this at every instant, only once strays are killed: a node that comes back after being
  offline still runs the attempts the host retried elsewhere (or killed) meanwhile, and learns of
  them only from the answer to its heartbeat; likewise a lost task it could not take back (its
  cores gone) and the user then killed. Until such a node takes its orders, the attempts
  `strays()` names there are excused; once it has, none is left unkilled (checked in
  `take_orders`);
- no pending task waits on a dependency that already ended, no queued task has a dependency
  that did not complete, no pending task has one that ended badly, and a task failed by a
  dependency names one that ended in that state, and never ran;
- `why_pending` says why for every pending task, and a waiting one names a dependency.

Each rule also checks its own outcome: a refusal is predicted (too many cores, unknown node or
dependency) and changes nothing, a tick sends every silent node offline, the first queued task
its throttle lets run never waits while it fits, scheduling never takes a batch past its
throttle (recovering a lost task may), orders go only to online nodes and never relaunch what
the runner holds, a result ends or retries the attempt it names, a late result of an earlier
attempt touches only its history, a result delivered again changes nothing, a restart keeps the
queue and the active tasks.

The machine found three core bugs before attempts existed (a start report reclaiming a lost task
onto an offline node, a shrinking node double-booking cores, a kill forgotten across a host
restart) and three since (a restart reordering a queue that retried and released tasks had
joined at the back, a node held idle for a task its own batch's throttle kept from starting, a
result sent again rewriting its attempt's history); each is pinned by a minimal reproduction at
the end of the file.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field, replace
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
from hakuriver.core.model import Node, Task, split_run_key
from hakuriver.core.states import PROBLEM_STATES, RETRIED_STATES, TRANSITIONS, NodeState, TaskState

T = TypeVar("T")
TIMEOUT = 30.0
#: seconds a task queued ahead may wait on its node (core/ahead.py)
AHEAD_WAIT = 5.0
NODES = ("a", "b", "c")
ACTIVE = frozenset({TaskState.PENDING, TaskState.ASSIGNING, TaskState.RUNNING, TaskState.LOST})
#: how a process can end on its own: (exit_code, signal, error)
OUTCOMES = {
    "ok": (0, None, ""),
    "fail": (3, None, ""),
    "signal": (None, 9, "killed by signal 9"),
    "no-start": (None, None, "command not found"),
    "timeout": (None, 15, "time limit of 60s reached"),
}
#: mostly completed, so that dependencies complete too
outcome = st.sampled_from(("ok", "ok", *OUTCOMES))
UNKNOWN = "nope"
pick = st.integers(0, 1000)
cores = st.integers(1, 8)
#: mostly small tasks, so that several share a node
task_cores = st.one_of(st.integers(1, 2), cores)
#: mostly any node, sometimes a named one, rarely one that does not exist
target = st.sampled_from(("",) * 6 + NODES + ("zz",))
#: mostly none
retries = st.sampled_from((0, 0, 0, 1, 2))
#: mostly no --after; else one or two tasks or batches the machine knows: an active one (so that
#: chains grow) or any, final ones too (drawn as indexes)
after = st.one_of(st.just([]), st.just([]), st.lists(st.tuples(st.booleans(), pick), min_size=1, max_size=2))
#: mostly none (for a batch of several tasks)
throttle = st.sampled_from((0, 0, 1, 2))
#: mostly less than a heartbeat interval, sometimes past the timeout
short = st.integers(0, 3)
pause = st.one_of(short, short, short, st.sampled_from([TIMEOUT, TIMEOUT + 0.5]), st.integers(0, 3 * int(TIMEOUT)))


def runnable(c: Cluster) -> list[str]:
    """The pending tasks free to run, queued or held back by their throttle, in submission order."""
    return sorted([*c.queue, *c.queue.parked()], key=c.rank.__getitem__)


@dataclass
class Runner:
    """A simulated runner: the attempts it holds by run key (launched, or ended with the result not yet delivered)."""

    cores: int
    #: its keeper holds launches for busy cores: it may be given tasks queued ahead
    ahead: bool = False
    #: launched and not yet ended, with the order as it came over the wire (in that order)
    running: dict[str, Task] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    killing: set[str] = field(default_factory=set)
    #: ended, result not yet delivered (the outbox)
    results: dict[str, Finished] = field(default_factory=dict)
    #: results delivered: each may come again, its acknowledgement lost on the way back
    delivered: dict[str, Finished] = field(default_factory=dict)

    def held(self) -> set[str]:
        return set(self.running) | set(self.results)

    def ending(self) -> frozenset[str]:
        return frozenset(self.killing | set(self.results))

    def live(self) -> set[str]:
        """Attempts whose process runs on (or waits for its cores) and is not being killed."""
        return set(self.running) - self.killing

    def waiting(self) -> set[str]:
        """Launched, not started: a core of theirs is used by an attempt launched before (queued ahead)."""
        busy: set[int] = set()
        waiting = set()
        for key, task in self.running.items():
            if busy & set(task.core_ids):
                waiting.add(key)
            busy |= set(task.core_ids)
        return waiting

    def forget(self) -> None:
        """The machine rebooted: every process and undelivered result is gone."""
        self.running, self.started, self.killing, self.results, self.delivered = {}, set(), set(), {}, {}


def chosen(options: list[T], i: int) -> T:
    """The i-th option, wrapping around: rules draw an index, the state says what it picks from."""
    return sorted(options)[i % len(options)]


def expected_state(ev: Finished) -> TaskState:
    if ev.killed:
        return TaskState.KILLED
    if ev.timed_out:
        return TaskState.TIMEOUT
    return TaskState.COMPLETED if ev.exit_code == 0 and not ev.error else TaskState.FAILED


def worst(states: list[TaskState]) -> TaskState | None:
    """One problem state among them (the first by name, as the store's batch counts list them), if any."""
    return min((s for s in states if s in PROBLEM_STATES), key=lambda s: s.value, default=None)


def without_history(task: Task) -> Task:
    return replace(task, attempts=[])


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.cluster = Cluster(TIMEOUT, AHEAD_WAIT)
        self.runners: dict[str, Runner] = {}
        #: what the host would have persisted, from the effects alone
        self.store_tasks: dict[str, Task] = {}
        self.store_nodes: dict[str, Node] = {}
        #: every task ever accepted (the newest incarnation after a restart) and its states seen
        self.live: dict[str, Task] = {}
        self.history: dict[str, list[TaskState]] = {}
        self.submitted: dict[str, int] = {}
        self.next_id = 0
        #: every batch accepted: its tasks, and its throttle
        self.batches: dict[str, list[str]] = {}
        self.throttles: dict[str, int] = {}
        #: online nodes that may run strays they have not yet been told of: they came back, or a lost
        #: task they still run was killed; their next orders kill them
        self.owing: set[str] = set()

    # ---- effects -------------------------------------------------------------------------
    def apply(self, effects: list) -> None:
        failed_by_deps = []
        for e in effects:
            if isinstance(e, TaskChanged):
                self.saw(e)
                if e.task.state is TaskState.FAILED and e.task.error.startswith("dependency "):
                    failed_by_deps.append(e.task)
            elif isinstance(e, NodeChanged):
                self.store_nodes[e.node.name] = copy.deepcopy(e.node)
        for task in failed_by_deps:  # once every record of the step is stored
            self.check_failed_by_dependency(task)

    def saw(self, e: TaskChanged) -> None:
        tid, state = e.task.task_id, e.task.state
        seen = self.history.setdefault(tid, [])
        if e.created:  # pending when created; one with a dependency that already ended badly fails at once (the next effect)
            assert not seen, f"{tid} created twice"
            assert state is TaskState.PENDING or e.task.error.startswith("dependency "), f"{tid} created {state.value}"
            state = TaskState.PENDING
        else:
            assert seen, f"{tid} changed before it was created"
            last = seen[-1]
            assert last in ACTIVE, f"{tid} changed after it ended {last.value}"
            assert state is last or state in TRANSITIONS[last], f"{tid}: {last.value} -> {state.value}"
            before = self.store_tasks[tid].attempt
            assert e.task.attempt >= before, f"{tid} went back from attempt {before} to {e.task.attempt}"
        seen.append(state)
        self.store_tasks[tid] = copy.deepcopy(e.task)
        self.live[tid] = e.task

    def check_failed_by_dependency(self, task: Task) -> None:
        """It names a dependency of its own that ended in that problem state, and it never ran."""
        dep, _, how = task.error.removeprefix("dependency ").partition(" ended ")
        assert dep in task.after, f"{task.task_id} failed by {dep}, not one of its dependencies {task.after}"
        assert TaskState(how) in PROBLEM_STATES, f"{task.task_id} failed because {dep} ended {how}"
        assert TaskState(how) in self.members(dep), f"{task.task_id}: {dep} ended {how}? it stands {self.members(dep)}"
        assert self.history[task.task_id] == [TaskState.PENDING, TaskState.FAILED], f"{task.task_id} ran, then failed by {dep}"
        assert task.attempt == 1 and not task.attempts and not task.node, f"{task.task_id} was placed before failing by {dep}"

    # ---- the host's part ------------------------------------------------------------------
    def members(self, dep: str) -> list[TaskState]:
        """The stored states of a task, or of every task of a batch."""
        if dep in self.store_tasks:
            return [self.store_tasks[dep].state]
        return [self.store_tasks[tid].state for tid in self.batches.get(dep, ())]

    def stored_outcome(self, dep: str) -> TaskState | None:
        """How the store says a task or batch ended, as host.lookup.Lookup.ended_as reads it (None: unknown)."""
        states = self.members(dep)
        if not states:
            return None
        if dep in self.store_tasks:
            return states[0]
        return worst(states) or TaskState.COMPLETED

    def outcomes(self, deps: list[str]) -> dict[str, TaskState]:
        """HostService._dependencies: the outcome of every dependency that is not an active task."""
        return {d: s for d in deps if d not in self.cluster.tasks and (s := self.stored_outcome(d)) is not None}

    def dep_status(self, dep: str) -> TaskState | None:
        """How a dependency stands: a problem state once it (or a task of the batch) ended so,
        completed once all of it did, else None (it may still complete)."""
        states = self.members(dep)
        bad = worst(states)
        if bad is not None:
            return bad
        return TaskState.COMPLETED if all(s is TaskState.COMPLETED for s in states) else None

    # ---- helpers -------------------------------------------------------------------------
    def heartbeat(self, name: str, leaving: bool = False) -> None:
        r = self.runners[name]
        report = NodeReport(name, tuple(range(r.cores)), queues_ahead=r.ahead, leaving=leaving)
        node = self.cluster.nodes.get(name)
        was = node.state if node is not None else NodeState.OFFLINE
        self.apply(self.cluster.on_heartbeat(report, r.held(), self.now))
        node = self.cluster.nodes[name]
        assert node.state is NodeState.ONLINE and node.last_heartbeat == self.now
        if leaving:  # nothing it never received stays assigned there
            assert not [t for t in node.task_ids if self.cluster.tasks[t].state is TaskState.ASSIGNING
                        and self.cluster.tasks[t].run_key not in r.held()], "an undelivered task left on a leaving node"
        for tid in self.cluster.lost.get(name, ()):  # the attempts the node still runs, on cores still free, are taken back
            task = self.cluster.tasks[tid]
            back = task.run_key in r.held() and set(task.core_ids) <= set(node.cores.free_ids())
            assert not back, f"{task.run_key} runs on {name} again, on free cores, but stays lost"
        if was is NodeState.OFFLINE:
            self.owing.add(name)

    def new_task(self, spec: tuple[int, str, int], deps: list[str], batch_id: str, throttle: int) -> Task:
        n_cores, target, retries = spec
        self.next_id += 1
        tid = f"t{self.next_id}"
        return Task(task_id=tid, command="true", args=[tid], env={}, cores=n_cores, submitted_at=self.now, target_node=target,
                    batch_id=batch_id, retries=retries, after=list(deps), throttle=throttle)

    def dependency(self, active: bool, i: int) -> str | None:
        """An active task or batch (if any), or any the machine knows (None: none yet)."""
        live = [*self.cluster.tasks, *(b for b, ids in self.batches.items() if any(t in self.cluster.tasks for t in ids))]
        options = live if active and live else [*self.store_tasks, *self.batches]
        return chosen(options, i) if options else None

    def would_refuse(self, tasks: list[Task]) -> bool:
        totals = {name: node.total_cores for name, node in self.cluster.nodes.items()}
        biggest = max(totals.values(), default=0)
        too_big = any(t.cores > (totals.get(t.target_node, 0) if t.target_node else biggest) for t in tasks)
        return too_big or any(not self.members(d) for t in tasks for d in t.after)

    def snapshot(self) -> tuple:
        c = self.cluster
        nodes = tuple((n.name, n.cores.free_ids(), frozenset(n.task_ids), n.state) for n in c.nodes.values())
        deps = {tid: frozenset(d) for tid, d in c.deps.waiting.items()}
        return tuple(c.tasks), tuple(c.queue), nodes, deps, dict(c.batches.left), dict(c.batch_running)

    def eligible(self, task: Task) -> list[Node]:
        online = [n for n in self.cluster.nodes.values() if n.state is NodeState.ONLINE and not n.leaving]
        return [n for n in online if not task.target_node or n.name == task.target_node]

    def throttled(self, task: Task) -> bool:
        return bool(task.throttle) and self.cluster.batch_running.get(task.batch_id, 0) >= task.throttle

    def runner_tasks(self, attr: str) -> list[tuple[str, str]]:
        return [(name, key) for name, r in self.runners.items() for key in getattr(r, attr)]

    def unreported(self) -> list[tuple[str, str]]:
        unstarted = [(name, key) for name, key in self.runner_tasks("running")
                     if key not in self.runners[name].started and key not in self.runners[name].waiting()]
        return unstarted + self.runner_tasks("results")

    def offline_runners(self) -> list[str]:
        return [name for name in self.runners if self.cluster.nodes[name].state is NodeState.OFFLINE]

    def current(self, key: str) -> Task | None:
        """The active task whose current attempt this run key names, if any."""
        tid, attempt = split_run_key(key)
        task = self.cluster.tasks.get(tid)
        return task if task is not None and task.attempt == attempt else None

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
    @initialize(sizes=st.lists(cores, min_size=1, max_size=len(NODES)), ahead=st.lists(st.booleans(), min_size=3, max_size=3))
    def register_nodes(self, sizes: list[int], ahead: list[bool]) -> None:
        for name, n_cores, queues in zip(NODES, sizes, ahead):
            self.runners[name] = Runner(n_cores, ahead=queues)
            self.register_or_heartbeat(name, n_cores, poll=False)

    @rule(name=st.sampled_from(NODES), n_cores=cores, poll=st.booleans())
    def register_or_heartbeat(self, name: str, n_cores: int, poll: bool) -> None:
        """Most heartbeats are long-polls that come back with orders, as HostService.heartbeat does."""
        self.runners.setdefault(name, Runner(n_cores, ahead=True))
        self.heartbeat(name)
        if poll:
            self.take_orders(name)

    @precondition(lambda self: self.offline_runners())
    @rule(i=pick, keep=st.booleans(), then_schedule=st.booleans())
    def node_returns(self, i: int, keep: bool, then_schedule: bool) -> None:
        """A node comes back, with what it ran (some of it maybe retried elsewhere meanwhile), or rebooted;
        the host usually schedules at once (HostService.heartbeat). The heartbeat's answer, with the kills
        of its strays, may be lost: orders come in a later step."""
        name = chosen(self.offline_runners(), i)
        if not keep:
            self.runners[name].forget()
        self.heartbeat(name)
        if then_schedule:
            self.schedule()

    @precondition(lambda self: len(self.runners) > 1)
    @rule(i=pick, poll=st.booleans())
    def node_drops_out(self, i: int, poll: bool) -> None:
        """One node stops answering while the others keep heartbeating: its attempts are lost, or
        retried on the others; it keeps running them, as a node cut off by the network does."""
        name = chosen(list(self.runners), i)
        self.now += TIMEOUT + 1
        for other in sorted(set(self.runners) - {name}):
            self.register_or_heartbeat(other, self.runners[other].cores, poll)
        self.tick()
        assert self.cluster.nodes[name].state is NodeState.OFFLINE, f"{name} silent but online"

    @precondition(lambda self: self.runners)
    @rule(i=pick, n_cores=cores)
    def runner_resizes(self, i: int, n_cores: int) -> None:
        """The runner restarts with another core count; its keeper keeps its tasks running."""
        name = chosen(list(self.runners), i)
        self.runners[name].cores = n_cores
        self.heartbeat(name)

    @precondition(lambda self: self.runners)
    @rule(i=pick)
    def runner_leaves(self, i: int) -> None:
        """A runner says it stops (its processes run on, as under the keeper); the next heartbeat is a
        runner back: until then nothing new may be placed on the node."""
        name = chosen(list(self.runners), i)
        self.heartbeat(name, leaving=True)
        self.schedule()
        node = self.cluster.nodes[name]
        assert not [t for t in node.task_ids if self.cluster.tasks[t].state is TaskState.ASSIGNING
                    and self.cluster.tasks[t].run_key not in self.runners[name].held()], f"placed on leaving {name}"

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
        if orders.launch and not r.ahead:
            assert orders.wait_limit is None, f"a wait limit for {name}, which queues nothing ahead"
        for task in orders.launch:
            assert task.run_key not in held, f"{task.run_key} launched again on {name}"
            assert task.state is TaskState.ASSIGNING and task.node == name, f"{task.run_key} launched as {task.state.value}"
            assert set(task.core_ids) <= set(node.cores.all), f"{task.run_key} given cores {task.core_ids} not on {name}"
            r.running[task.run_key] = copy.deepcopy(task)
        for key in orders.kill:
            assert key in held and key not in ending, f"kill order for {key}, not held or already ending"
            r.killing.add(key)
        if node is not None and node.state is NodeState.ONLINE:
            self.owing.discard(name)
            killed = {key for key in held - ending if self.history[split_run_key(key)[0]][-1] is TaskState.KILLED}
            assert killed <= r.killing, f"{sorted(killed - r.killing)} killed by the user but left running on {name}"
            strays = {key for key in held - ending if self.current(key) is None}
            assert strays <= r.killing, f"{sorted(strays - r.killing)} are no current attempt but left running on {name}"
            doomed = {key for key in held - ending if (task := self.current(key)) is not None and task.kill_requested}
            assert doomed <= r.killing, f"{sorted(doomed - r.killing)} to be killed, but left running on {name}"

    @precondition(lambda self: self.unreported())
    @rule(i=pick)
    def report_one(self, i: int) -> None:
        """One start or one result that a runner has not yet told the host gets through."""
        name, key = chosen(self.unreported(), i)
        if key in self.runners[name].results:
            self.report_finished(name, key)
        else:
            self.report_started(name, key)

    def report_started(self, name: str, key: str) -> None:
        self.runners[name].started.add(key)
        tid, attempt = split_run_key(key)
        task = self.current(key)
        before = task.state if task is not None and task.node == name else None
        record = copy.deepcopy(self.cluster.tasks.get(tid))
        self.apply(self.cluster.on_started(name, Started(tid, self.now, f"/out/{tid}", f"/err/{tid}", attempt=attempt)))
        if task is None:
            assert self.cluster.tasks.get(tid) == record, f"the start of {key}, not the current attempt, changed {tid}"
        elif before is TaskState.ASSIGNING:
            assert task.state is TaskState.RUNNING, f"{key} started but {task.state.value}"
        elif before is TaskState.LOST:
            assert task.state in (TaskState.RUNNING, TaskState.LOST), f"lost {key} started but {task.state.value}"

    def exitable(self) -> list[tuple[str, str]]:
        """Attempts whose process may end now: all but those waiting for their cores, unless being killed."""
        return [(name, key) for name, key in self.runner_tasks("running")
                if key not in self.runners[name].waiting() or key in self.runners[name].killing]

    @precondition(lambda self: self.exitable())
    @rule(i=pick, outcome=outcome, deliver=st.booleans())
    def process_exits(self, i: int, outcome: str, deliver: bool) -> None:
        """A process ends, started or not, or runs out of time; its result is sent at once or waits in the outbox."""
        name, key = chosen(self.exitable(), i)
        self.process_ends(name, key, outcome)
        if deliver:
            self.report_finished(name, key)

    def waiting_ones(self) -> list[tuple[str, str]]:
        return [(name, key) for name, r in self.runners.items() for key in r.waiting() - r.killing]

    @precondition(lambda self: self.waiting_ones())
    @rule(i=pick, deliver=st.booleans())
    def hand_back(self, i: int, deliver: bool) -> None:
        """A launch queued ahead waited past its limit for its core: the node hands it back unrun."""
        name, key = chosen(self.waiting_ones(), i)
        r = self.runners[name]
        order = r.running.pop(key)
        r.results[key] = Finished(order.task_id, self.now, returned=True, attempt=order.attempt)
        if deliver:
            self.report_finished(name, key)

    def process_ends(self, name: str, key: str, outcome: str) -> None:
        r = self.runners[name]
        waited = key in r.waiting()  # only when being killed: it ends unstarted
        order = r.running.pop(key)
        killed = key in r.killing
        code, sig, error = (None, 15, "killed by user") if killed else OUTCOMES[outcome]
        began = self.now if key in r.started or (outcome != "no-start" and not waited) else None
        r.results[key] = Finished(order.task_id, self.now, code, sig, error, killed=killed,
                                  timed_out=not killed and outcome == "timeout", started_at=began, attempt=order.attempt)
        r.killing.discard(key)

    def report_finished(self, name: str, key: str) -> None:
        event = self.runners[name].results.pop(key)
        self.runners[name].delivered[key] = event
        tid = event.task_id
        task = self.cluster.tasks.get(tid)
        before = copy.deepcopy(task)
        ours = task is not None and task.node == name and task.attempt == event.attempt
        self.apply(self.cluster.on_finished(name, event))
        if ours:
            self.check_attempt_ended(before, event)
        elif task is not None and task.attempt != event.attempt:
            self.check_late(before, task, event)

    @precondition(lambda self: self.runner_tasks("delivered"))
    @rule(i=pick)
    def result_comes_again(self, i: int) -> None:
        """The host took a result but its acknowledgement was lost: the runner sends it again. Nothing changes."""
        name, key = chosen(self.runner_tasks("delivered"), i)
        event = self.runners[name].delivered[key]
        before = copy.deepcopy(self.cluster.tasks.get(event.task_id)), self.snapshot()
        self.apply(self.cluster.on_finished(name, event))
        after = self.cluster.tasks.get(event.task_id), self.snapshot()
        assert after == before, f"{key}'s result, delivered again, changed {event.task_id}: {before[0]} -> {after[0]}"

    def check_attempt_ended(self, before: Task, event: Finished) -> None:
        """The attempt's result ends the task, or, with retries left, queues its next attempt."""
        tid, state = before.task_id, expected_state(event)
        if event.returned:  # it never ran: queued again as a new attempt that uses no retry (or ended, if killed)
            task = self.cluster.tasks.get(tid)
            if before.kill_requested:
                assert task is None and self.history[tid][-1] is TaskState.KILLED, f"{tid} killed, handed back, not ended"
            else:
                assert task is not None and task.state is TaskState.PENDING and task.attempt == before.attempt + 1, (
                    f"{tid} handed back but {task}")
                assert not task.attempts[-1].delivered and task.retries_used == before.retries_used, f"{tid}: {task.attempts}"
                assert tid in self.cluster.queue or self.cluster.queue.is_parked(tid), f"handed back {tid} not queued"
            return
        if state in RETRIED_STATES and before.retries_used < before.retries and not before.kill_requested:
            task = self.cluster.tasks[tid]
            assert task.state is TaskState.PENDING and task.attempt == before.attempt + 1, f"{tid} not retried after {state.value}"
            assert tid in self.cluster.queue or self.cluster.queue.is_parked(tid), f"retried {tid} not queued"
            last = task.attempts[-1]
            assert (last.attempt, last.state, last.node) == (before.attempt, state, before.node), f"{tid}'s history: {last}"
        else:
            assert tid not in self.cluster.tasks, f"{tid} still active after its result"
            assert self.history[tid][-1] is state, f"{tid} ended {self.history[tid][-1].value}, not {state.value}"

    def check_late(self, before: Task, task: Task, event: Finished) -> None:
        """A result of an earlier attempt: the history notes it, the current attempt is untouched."""
        assert without_history(task) == without_history(before), f"late result of {event.task_id}.{event.attempt} changed the task"
        if event.returned:  # that attempt never ran: its history stands
            assert task.attempts == before.attempts, f"{event.task_id}.{event.attempt}, handed back late, rewrote the history"
            return
        assert [a.attempt for a in task.attempts] == [a.attempt for a in before.attempts]
        for old, new in zip(before.attempts, task.attempts):
            if new.attempt == event.attempt:
                assert new.state is expected_state(event), f"{event.task_id}'s attempt {event.attempt} noted {new.state.value}"
                assert (new.node, new.core_ids) == (old.node, old.core_ids), f"{event.task_id}'s attempt {event.attempt} moved"
            else:
                assert new == old, f"late result of attempt {event.attempt} changed attempt {new.attempt} of {event.task_id}"

    @precondition(lambda self: self.runners)
    @rule(i=pick)
    def runner_reports(self, i: int) -> None:
        """A report with every start and result the runner has, answered with orders (HostService.report)."""
        self.report_all(chosen(list(self.runners), i))

    def report_all(self, name: str) -> None:
        r = self.runners[name]
        for key in sorted(set(r.running) - r.started - r.waiting()):
            self.report_started(name, key)
        for key in sorted(r.results):
            self.report_finished(name, key)
        self.take_orders(name)

    # ---- clients and scheduling ----------------------------------------------------------
    @rule(specs=st.lists(st.tuples(task_cores, target, retries), min_size=1, max_size=12), deps=after,
          unknown=st.sampled_from((False,) * 9 + (True,)), limit=throttle, then_schedule=st.booleans())
    def submit(self, specs: list[tuple[int, str, int]], deps: list[tuple[bool, int]], unknown: bool, limit: int,
               then_schedule: bool) -> None:
        """A client submits; the host usually schedules right away (HostService.submit)."""
        self.submit_tasks(specs, deps, unknown, limit)
        if then_schedule:
            self.schedule()

    @rule(n=st.integers(6, 16), retry=retries, then_schedule=st.booleans())
    def submit_array(self, n: int, retry: int, then_schedule: bool) -> None:
        """An array of one-core tasks for any node: once a few of them ran short, the rest may be queued ahead."""
        self.submit_tasks([(1, "", retry)] * n, [], False, 0)
        if then_schedule:
            self.schedule()

    def submit_tasks(self, specs: list[tuple[int, str, int]], deps: list[tuple[bool, int]], unknown: bool, limit: int) -> None:
        ids = sorted({d for active, i in deps if (d := self.dependency(active, i))}) + ([UNKNOWN] if unknown else [])
        batch_id = f"b{self.next_id + 1}" if len(specs) > 1 else ""
        tasks = [self.new_task(spec, ids, batch_id, limit if batch_id else 0) for spec in specs]
        refuse, before = self.would_refuse(tasks), self.snapshot()
        try:
            effects = self.cluster.on_submit(tasks, self.now, self.outcomes(ids))
        except SubmitRefused:
            assert refuse, "refused a batch that fits"
            assert self.snapshot() == before, "a refused submission changed the cluster"
            return
        assert not refuse, "accepted a batch that can never run"
        for t in tasks:
            self.submitted[t.task_id] = len(self.submitted)
        if batch_id:
            self.batches[batch_id] = [t.task_id for t in tasks]
            self.throttles[batch_id] = limit
        self.apply(effects)

    @rule()
    def schedule(self) -> None:
        effects = self.cluster.schedule()
        self.apply(effects)
        placed = {e.task.batch_id for e in effects if isinstance(e, TaskChanged) and e.task.batch_id}
        for batch_id, running in self.cluster.batch_running.items():
            limit = self.throttles[batch_id]
            assert running <= limit or batch_id not in placed, f"scheduling took batch {batch_id} to {running} > {limit}"
        for tid in self.cluster.queue:  # the first one its throttle lets run
            head = self.cluster.tasks[tid]
            if not self.throttled(head):
                for node in self.eligible(head):
                    assert node.free_cores < head.cores, f"head {head.task_id} fits on {node.name} but waits"
                break

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
        if before is TaskState.LOST:  # a node that came back but could not take it back may still run it
            self.owing.add(task.node)
        if before in (TaskState.PENDING, TaskState.LOST):
            assert self.history[tid][-1] is TaskState.KILLED and tid not in self.cluster.tasks
        else:
            assert task.kill_requested and tid in self.cluster.tasks

    # ---- host restart --------------------------------------------------------------------
    @rule()
    def simulate_host_restart(self) -> None:
        old = self.cluster
        active = [t for t in self.store_tasks.values() if t.state in ACTIVE]
        ids = {t.task_id for t in active}
        deps = sorted({d for t in active if t.state is TaskState.PENDING for d in t.after if d not in ids})
        outcomes = {d: s for d in deps if (s := self.stored_outcome(d)) is not None}  # HostService.restore
        self.cluster = Cluster(TIMEOUT, AHEAD_WAIT)
        effects = self.cluster.restore(copy.deepcopy(list(self.store_nodes.values())), copy.deepcopy(active), self.now, outcomes)
        self.live.update(self.cluster.tasks)
        self.apply(effects)
        # (which of a throttled batch's tasks are queued and which parked may differ: the order may not)
        assert runnable(self.cluster) == runnable(old), "queue order changed across a restart"
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

    @invariant()
    def attempts_count_up(self) -> None:
        for tid, task in self.live.items():
            # attempt numbers past 1 + retries: only for launches that never reached their node
            assert task.retries_used <= task.retries, f"{tid} used {task.retries_used} of {task.retries} retries"
            numbers = [a.attempt for a in task.attempts]
            assert numbers == list(range(1, task.attempt)), f"{tid} at attempt {task.attempt} lists attempts {numbers}"

    @invariant()
    def one_live_attempt_per_task(self) -> None:
        """At most one live attempt per task on online nodes, each the current attempt of an active
        task placed there; a node in `owing` may run the strays it has not been told of until it takes its orders."""
        live: Counter[str] = Counter()
        for name, r in self.runners.items():
            if self.cluster.nodes[name].state is not NodeState.ONLINE:
                continue
            excused = set(self.cluster.strays(name, r.held(), r.ending())) if name in self.owing else set()
            for key in r.live() - excused:
                task = self.current(key)
                assert task is not None and task.node == name, f"{key} runs on {name} but is no current attempt there"
                live[task.task_id] += 1
        twice = sorted(tid for tid, n in live.items() if n > 1)
        assert not twice, f"{twice} run twice on online nodes"

    @invariant()
    def dependencies_settled(self) -> None:
        """A pending task waits only on what may still complete, and is queued only once all of it did."""
        waiting = self.cluster.deps.waiting
        for tid, task in self.cluster.tasks.items():
            if task.state is not TaskState.PENDING:
                continue
            for dep in task.after:
                status = self.dep_status(dep)
                assert status is None or status is TaskState.COMPLETED, f"{tid} pending though {dep} ended {status.value}"
                if dep in waiting.get(tid, ()):
                    assert status is None, f"{tid} waits on {dep}, which has completed"
                else:
                    assert status is TaskState.COMPLETED, f"{tid} no longer waits on {dep}, which has not completed"

    @invariant()
    def why_pending_says_why(self) -> None:
        for tid, task in self.cluster.tasks.items():
            why = self.cluster.why_pending(tid)
            if task.state is not TaskState.PENDING:
                assert why == "", f"{task.state.value} {tid} pending because {why}"
            elif tid in self.cluster.deps:
                assert why.startswith("waiting for dependency "), f"{tid} waits on dependencies, but: {why}"
            else:
                assert why and not why.startswith("waiting"), f"queued {tid} pending because {why!r}"


TestClusterMachine = ClusterMachine.TestCase
TestClusterMachine.settings = settings(max_examples=500, stateful_step_count=100, deadline=None)


class AheadMachine(ClusterMachine):
    """The same machine where most work is arrays of small tasks for any node (some of two cores): their batches
    turn short and their tasks are queued ahead behind busy cores, handed back, killed while
    queued, lost with their node and restored by a host restart (core/ahead.py)."""

    @rule(specs=st.lists(st.tuples(st.sampled_from((1, 1, 1, 1, 1, 2)), st.just(""), retries), min_size=6, max_size=24),
          deps=after,
          unknown=st.just(False), limit=st.just(0), then_schedule=st.booleans())
    def submit(self, specs: list[tuple[int, str, int]], deps: list[tuple[bool, int]], unknown: bool, limit: int,
               then_schedule: bool) -> None:
        super().submit(specs, deps, unknown, limit, then_schedule)

    @initialize(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=len(NODES)),
                ahead=st.lists(st.sampled_from((True, True, True, False)), min_size=3, max_size=3))
    def register_nodes(self, sizes: list[int], ahead: list[bool]) -> None:
        """Small nodes, most of which queue ahead: arrays fill them, and their batches turn short."""
        super().register_nodes(sizes, ahead)

    @rule(dt=st.one_of(st.sampled_from((0.0, 0.05, 0.2)), pause), then_tick=st.booleans())
    def advance(self, dt: float, then_tick: bool) -> None:
        """Time passes: often less than a short task's run (SHORT), so that batches turn short."""
        super().advance(dt, then_tick)

    @precondition(lambda self: self.runners)
    @rule(i=pick)
    def wave(self, i: int) -> None:
        """A node takes its orders, every process it can run ends well at once, and it reports and
        takes its next orders: arrays go by."""
        name = chosen(list(self.runners), i)
        self.schedule()
        self.take_orders(name)
        for _, key in [(n, k) for n, k in self.exitable() if n == name]:
            self.process_ends(name, key, "ok")
        self.report_all(name)
        self.queued_ahead += self.cluster.queued_ahead_total  # counted per cluster: a restart starts again
        self.cluster.queued_ahead_total = 0

    @precondition(lambda self: self.runners)
    @rule(i=pick)
    def waves(self, i: int) -> None:
        """Three waves on every node in turn: an array turns short and the rest of it queues ahead."""
        for _ in range(3):
            for k in range(len(self.runners)):
                self.wave(i + k)

    queued_ahead = 0

    def teardown(self) -> None:
        AHEAD_SEEN.append(self.queued_ahead + self.cluster.queued_ahead_total)


AHEAD_SEEN: list[int] = []
TestAheadMachine = AheadMachine.TestCase
TestAheadMachine.settings = settings(max_examples=300, stateful_step_count=100, deadline=None)


def test_the_ahead_machine_queues_ahead():
    """The machine above is no test of queueing ahead if nothing was: one run in ten at least must have
    queued some (a batch must first show short tasks, and be at the head of the queue with every core
    busy; `waves` makes that common: a quarter to a third of the runs queue some)."""
    if not AHEAD_SEEN:
        TestAheadMachine("runTest").runTest()
    assert sum(1 for n in AHEAD_SEEN if n) >= len(AHEAD_SEEN) // 10, f"queued ahead in {AHEAD_SEEN}"


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


def test_a_host_restart_moves_a_retried_task_ahead_of_the_tasks_it_queued_behind():
    c = one_task_on("a", 1)
    c.tasks["t1"].retries = 1
    c.on_submit([Task(task_id="t2", command="true", args=[], env={}, cores=1, submitted_at=1.0)])
    c.on_finished("a", Finished("t1", 2, exit_code=3))  # t1 goes back to the queue for its second attempt
    fresh = Cluster(TIMEOUT)
    fresh.restore(copy.deepcopy(list(c.nodes.values())), copy.deepcopy(list(c.tasks.values())), now=3)
    assert list(c.queue) == list(fresh.queue), f"queue {list(c.queue)}, after a restart {list(fresh.queue)}"


def test_a_node_reserved_for_a_task_its_own_batch_throttles_sits_idle_while_others_fit():
    c = Cluster(TIMEOUT)
    c.on_heartbeat(NodeReport("a", (0,)), set(), now=0.0)
    c.on_heartbeat(NodeReport("b", tuple(range(6))), set(), now=0.0)
    c.on_submit([Task(task_id="t0", command="true", args=[], env={}, cores=2, submitted_at=0.0, target_node="b")])
    c.schedule()  # b has 4 cores free, a 1
    batch = [Task(task_id=f"t{i}", command="true", args=[], env={}, cores=n, submitted_at=1.0, batch_id="b1", throttle=1)
             for i, n in ((1, 5), (2, 1))]
    c.on_submit([*batch, Task(task_id="t3", command="true", args=[], env={}, cores=1, submitted_at=2.0)])
    c.schedule()  # t1 reserves b; if t2 takes b1's one place on a, b idles for a task that cannot start
    assert c.tasks["t3"].state is TaskState.ASSIGNING, "t3 fits on b but waits behind a reservation for nothing"
    c.check_invariants()


def test_a_result_sent_again_after_its_acknowledgement_was_lost_rewrites_the_history():
    c = one_task_on("a", 1)
    c.tasks["t1"].retries = 1
    result = Finished("t1", 2, exit_code=None, signal=9, error="killed by signal 9")
    c.on_finished("a", result)  # attempt 1 failed: t1 is queued for attempt 2
    assert c.on_finished("a", result) == [], "the same result again is news"
    assert c.tasks["t1"].attempts[0].error == "killed by signal 9"
