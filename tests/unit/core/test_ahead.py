"""Work queued on a node ahead of its free cores (core/ahead.py), example by example.

The state machine (test_cluster_machine.py, AheadMachine) checks the invariants on random runs;
these pin the rules and the cases a review found: a restart that must keep a multi-core task's
hold when a one-core task submitted before it was queued behind it, lost tasks sharing a core
coming back, a hand-back as a new attempt, and no queue behind a long task.
"""

from __future__ import annotations

import copy

from hakuriver.core import ahead
from hakuriver.core.cluster import Cluster, Finished, NodeReport, Started
from hakuriver.core.model import Task
from hakuriver.core.states import TaskState

TIMEOUT = 30.0


def cluster(cores: int = 2, queues: bool = True) -> Cluster:
    c = Cluster(TIMEOUT, ahead_wait=5.0)
    c.on_heartbeat(NodeReport("n", tuple(range(cores)), queues_ahead=queues), set(), now=0.0)
    return c


def array(n: int, batch: str = "b", at: float = 0.0, first: int = 0) -> list[Task]:
    return [Task(task_id=f"{batch}{first + i}", command="true", args=[], env={}, cores=1, submitted_at=at, batch_id=batch)
            for i in range(n)]


def run_short(c: Cluster, task_id: str, at: float) -> None:
    """The task runs for 5 ms: its batch's queues are DEPTH deep (QUEUED_WORK allows 100)."""
    c.on_started("n", Started(task_id, at))
    c.on_finished("n", Finished(task_id, at + 0.005, exit_code=0, started_at=at))


def warm_up(c: Cluster) -> None:
    """Tasks b0 to b2 of batch "b" run short one after the other: the batch may now be queued ahead."""
    for i in range(3):
        run_short(c, f"b{i}", 1.0)
        c.schedule()


def test_a_short_batch_is_queued_behind_busy_cores_up_to_the_depth_and_only_then():
    c = cluster()
    c.on_submit(array(2 * ahead.DEPTH + 10))
    c.schedule()  # b0, b1 on the two cores; nothing is known of the batch yet: nothing queued ahead
    assert c.nodes["n"].queued.total == 0
    for i in range(2):
        run_short(c, f"b{i}", 1.0)
        c.schedule()
    assert c.nodes["n"].queued.total == 0  # two short runs: not yet MIN_DONE
    run_short(c, "b2", 2.0)
    c.schedule()
    c.check_invariants()
    assert c.nodes["n"].queued.as_dict() == {0: ahead.DEPTH, 1: ahead.DEPTH}
    assert c.queued_ahead_total == 2 * ahead.DEPTH
    assert c.nodes["n"].running_tasks == 2


def test_a_core_holds_about_queued_work_seconds_of_a_batch():
    c = cluster()
    c.on_submit(array(40))
    c.schedule()
    for i in range(3):  # each ran 0.2 s: two of them are QUEUED_WORK = 0.5 s at most
        c.on_started("n", Started(f"b{i}", 1.0))
        c.on_finished("n", Finished(f"b{i}", 1.2, exit_code=0, started_at=1.0))
        c.schedule()
    c.check_invariants()
    assert ahead.QUEUED_WORK == 0.5 and c.nodes["n"].queued.as_dict() == {0: 2, 1: 2}
    run_short(c, "b3", 2.0)  # a quicker one does not deepen it while the 0.2 s runs are among the last SAMPLES
    c.schedule()
    assert c.nodes["n"].queued.as_dict() == {0: 2, 1: 2}


def short(c: Cluster, batch: str, seconds: float) -> None:
    """Batch `batch` has shown MIN_DONE runs of `seconds` each."""
    for _ in range(ahead.MIN_DONE):
        c.short.ran(batch, seconds)


def test_a_deep_batch_behind_a_shallow_one_fills_the_cores_in_the_same_pass():
    c = cluster()
    c.on_submit(array(2, batch="x"))
    c.schedule()  # x0, x1 on the two cores
    short(c, "x", 0.01)
    c.on_submit(array(3, batch="s", at=1.0) + array(2 * ahead.DEPTH + 10, batch="d", at=2.0))
    short(c, "s", 0.2)  # two per core (0.5 s of work)
    short(c, "d", 0.001)  # DEPTH per core
    c.schedule()
    c.check_invariants()
    assert all(c.tasks[f"s{i}"].state is TaskState.ASSIGNING for i in range(3))
    assert c.nodes["n"].queued.as_dict() == {0: ahead.DEPTH, 1: ahead.DEPTH}


def test_a_node_holds_at_most_node_depth_tasks_queued():
    c = cluster(cores=16)
    c.on_submit(array(16 + 2 * ahead.NODE_DEPTH))
    c.schedule()
    short(c, "b", 0.001)
    c.schedule()
    c.check_invariants()
    assert 16 * ahead.DEPTH > ahead.NODE_DEPTH and c.nodes["n"].queued.total == ahead.NODE_DEPTH


def test_queued_work_is_a_quarter_of_the_wait_limit_at_most():
    c = Cluster(TIMEOUT, ahead_wait=1.0)
    c.on_heartbeat(NodeReport("n", (0, 1), queues_ahead=True), set(), now=0.0)
    c.on_submit(array(40))
    c.schedule()
    short(c, "b", 0.1)  # 0.25 s of work: two each (0.5 s would be five)
    c.schedule()
    assert c.nodes["n"].queued.as_dict() == {0: 2, 1: 2}
    assert c.short.depth("b", 1.0) == 2 and c.short.depth("b", 5.0) == 5 and c.short.depth("unknown", 5.0) == 0


def test_a_node_whose_keeper_cannot_queue_gets_nothing_ahead():
    c = cluster(queues=False)
    c.on_submit(array(20))
    c.schedule()
    warm_up(c)
    assert c.nodes["n"].queued.total == 0
    orders, _ = c.orders_for("n", set(), now=3.0)
    assert orders.wait_limit is None


def test_nothing_is_queued_behind_a_long_task_or_past_a_head_that_may_not_wait():
    c = cluster()
    c.on_submit([Task(task_id="long", command="sleep", args=["1h"], env={}, cores=1, submitted_at=0.0)])
    c.on_submit(array(20, at=1.0))
    c.schedule()
    warm_up(c)
    long_core = c.tasks["long"].core_ids[0]
    assert c.nodes["n"].queued.behind(long_core) == 0 and c.nodes["n"].queued.total > 0
    c.check_invariants()
    # a two-core task at the head of the queue: nothing behind it is queued ahead, it keeps its place
    d = cluster()
    d.on_submit(array(2))
    d.schedule()
    for _ in range(3):
        d.short.ran("b", 0.01)
    d.on_submit([Task(task_id="big", command="true", args=[], env={}, cores=2, submitted_at=1.0), *array(5, at=2.0, first=10)])
    d.schedule()
    assert d.nodes["n"].queued.total == 0 and d.tasks["big"].state is TaskState.PENDING


def test_a_hand_back_is_a_new_attempt_that_uses_no_retry_and_a_repeat_of_it_changes_nothing():
    c = cluster(cores=1)
    c.on_submit(array(20))
    c.schedule()
    warm_up(c)
    queued = [t for t in c.tasks.values() if t.state is TaskState.ASSIGNING][-1]
    back = Finished(queued.task_id, 9.0, returned=True, error="handed back", attempt=1)
    c.on_finished("n", back)
    c.check_invariants()
    assert queued.state is TaskState.PENDING and queued.attempt == 2 and queued.retries_used == 0
    assert queued.attempts[0].delivered is False and "handed back" in queued.attempts[0].error
    assert not c.short.is_short("b")  # not queued ahead again until short tasks show otherwise
    before = copy.deepcopy(queued)
    assert c.on_finished("n", back) == [] and queued == before


def test_a_restart_keeps_a_multi_core_task_holding_its_cores_with_an_earlier_task_queued_behind_it():
    c = cluster()
    a = Task(task_id="a", command="true", args=[], env={}, cores=1, submitted_at=1.0, batch_id="b",
             state=TaskState.ASSIGNING, node="n", core_ids=(0,))
    b = Task(task_id="b", command="true", args=[], env={}, cores=2, submitted_at=2.0, batch_id="c",
             state=TaskState.RUNNING, node="n", core_ids=(0, 1), started_at=2.0)
    fresh = Cluster(TIMEOUT, ahead_wait=5.0)
    fresh.restore([copy.deepcopy(c.nodes["n"])], [a, b], now=10.0)
    fresh.check_invariants()
    node = fresh.nodes["n"]
    assert node.task_ids == {"a", "b"} and node.free_cores == 0 and node.queued.as_dict() == {0: 1}
    assert node.queues_ahead  # it queued ahead before the restart: launches to it carry a wait limit
    fresh.on_finished("n", Finished("b", 11.0, exit_code=0, started_at=2.0))
    assert node.cores.free_ids() == (1,) and node.task_ids == {"a"}  # core 0 stays a's


def test_lost_tasks_sharing_a_core_come_back_together_and_the_core_stays_taken_until_both_end():
    c = cluster(cores=1)
    c.on_submit(array(12))
    c.schedule()
    warm_up(c)
    on_core = sorted(t.task_id for t in c.tasks.values() if t.state is TaskState.ASSIGNING)
    c.on_tick(now=100.0)
    assert all(c.tasks[t].state is TaskState.LOST for t in on_core)
    c.on_heartbeat(NodeReport("n", (0,), queues_ahead=True), set(on_core), now=101.0)
    c.check_invariants()
    assert all(c.tasks[t].state is TaskState.RUNNING for t in on_core)
    for t in on_core[:-1]:
        c.on_finished("n", Finished(t, 102.0, exit_code=0, started_at=101.0))
        assert c.nodes["n"].cores.free_ids() == ()
    c.on_finished("n", Finished(on_core[-1], 102.0, exit_code=0, started_at=101.0))
    c.check_invariants()


def test_the_wait_limit_leaves_the_host_an_interval_to_spare_before_a_node_counts_as_silent():
    assert ahead.wait_limit(5, 6) == 5.0  # the defaults: at most 5 s
    assert ahead.wait_limit(1, 3) == 1.0
    assert ahead.wait_limit(0.5, 8) == 3.0
    assert ahead.wait_limit(1, 2) == 0.0 and ahead.wait_limit(1, 1) == 0.0  # no room: nothing queued ahead


def test_nothing_is_queued_behind_a_task_of_several_cores_so_that_each_lost_task_comes_back_alone():
    c = cluster(cores=3)
    for _ in range(3):
        c.short.ran("b", 0.01)
    c.on_submit([Task(task_id="two", command="true", args=[], env={}, cores=2, submitted_at=0.0, batch_id="b"),
                 *array(10, at=1.0, first=10)])
    c.schedule()
    two = c.tasks["two"]
    assert len(two.core_ids) == 2 and not any(c.nodes["n"].queued.behind(core) for core in two.core_ids)
    assert c.nodes["n"].queued.total > 0  # behind the one-core task's core only
    c.check_invariants()
