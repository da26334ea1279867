"""Event sequences in, effects out; every test ends with check_invariants()."""

from __future__ import annotations

import pytest

from hakuriver.core.cluster import (
    Cluster,
    Finished,
    NodeChanged,
    NodeReport,
    NodeTaken,
    OrdersReady,
    Started,
    SubmitRefused,
    TaskChanged,
    UnknownTask,
)
from hakuriver.core.model import Task
from hakuriver.core.states import NodeState, TaskState

TIMEOUT = 30.0


def task(n: int, cores: int = 1, node: str = "") -> Task:
    return Task(task_id=f"t{n}", command="true", args=[], env={}, cores=cores, submitted_at=float(n), target_node=node)


def cluster_with(**nodes: int) -> Cluster:
    c = Cluster(TIMEOUT)
    for name, cores in nodes.items():
        c.on_heartbeat(NodeReport(name, tuple(range(cores))), set(), now=0.0)
    return c


def changed(effects) -> dict[str, str]:  # noqa: ANN001
    return {e.task.task_id: e.task.state.value for e in effects if isinstance(e, TaskChanged)}


def test_register_then_submit_places_with_exact_cores():
    c = cluster_with(a=4)
    assert changed(c.on_submit([task(1, 2), task(2, 2), task(3, 1)])) == {"t1": "pending", "t2": "pending", "t3": "pending"}
    effects = c.schedule()
    assert changed(effects) == {"t1": "assigning", "t2": "assigning"}
    assert OrdersReady("a") in effects
    assert c.tasks["t1"].core_ids == (0, 1) and c.tasks["t2"].core_ids == (2, 3)
    assert list(c.queue) == ["t3"]
    c.check_invariants()


def test_orders_are_the_assigned_tasks_the_runner_does_not_hold():
    c = cluster_with(a=2)
    c.on_submit([task(1), task(2)])
    c.schedule()
    orders, _ = c.orders_for("a", set(), now=1)
    assert [t.task_id for t in orders.launch] == ["t1", "t2"]
    orders, _ = c.orders_for("a", {"t1"}, now=1)
    assert [t.task_id for t in orders.launch] == ["t2"]
    c.check_invariants()


def test_started_then_finished_frees_cores_and_schedules_the_next():
    c = cluster_with(a=1)
    c.on_submit([task(1), task(2)])
    c.schedule()
    assert changed(c.on_started("a", Started("t1", 5.0, "/o", "/e"))) == {"t1": "running"}
    assert changed(c.on_finished("a", Finished("t1", 6.0, exit_code=0))) == {"t1": "completed"}
    assert "t1" not in c.tasks  # final tasks leave memory; the store keeps them
    assert changed(c.schedule()) == {"t2": "assigning"}
    c.check_invariants()


@pytest.mark.parametrize(
    "finished, state",
    [
        (Finished("t1", 1, exit_code=0), "completed"),
        (Finished("t1", 1, exit_code=3), "failed"),
        (Finished("t1", 1, exit_code=137, signal=9, error="killed by signal 9"), "failed"),
        (Finished("t1", 1, error="command not found: x"), "failed"),
        (Finished("t1", 1, killed=True), "killed"),
    ],
)
def test_final_state_from_the_report(finished, state):
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.schedule()
    assert changed(c.on_finished("a", finished)) == {"t1": state}
    c.check_invariants()


def test_submit_refused_when_larger_than_any_node_and_nothing_is_queued():
    c = cluster_with(a=4, b=2)
    with pytest.raises(SubmitRefused, match=r"5 cores requested but the largest node \(a\) has 4 cores"):
        c.on_submit([task(1, 1), task(2, 5)])
    assert c.tasks == {} and not c.queue


def test_submit_refused_with_no_nodes_or_unknown_node():
    with pytest.raises(SubmitRefused, match="no runner has registered"):
        Cluster(TIMEOUT).on_submit([task(1)])
    with pytest.raises(SubmitRefused, match="unknown node 'zz'"):
        cluster_with(a=1).on_submit([task(1, node="zz")])


def test_kill_pending_is_immediate():
    c = cluster_with(a=1)
    c.on_submit([task(1), task(2)])
    c.schedule()
    assert changed(c.on_kill("t2", now=3)) == {"t2": "killed"}
    assert not c.queue
    c.check_invariants()


def test_kill_running_orders_the_runner_and_waits_for_its_report():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.schedule()
    c.on_started("a", Started("t1", 1))
    effects = c.on_kill("t1", now=2)
    assert OrdersReady("a") in effects and c.tasks["t1"].state is TaskState.RUNNING
    orders, _ = c.orders_for("a", {"t1"}, now=2)
    assert orders.kill == ["t1"] and orders.launch == []
    assert changed(c.on_finished("a", Finished("t1", 3, killed=True))) == {"t1": "killed"}
    c.check_invariants()


def test_kill_of_an_undelivered_assignment_finishes_it_without_the_runner():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.schedule()
    c.on_kill("t1", now=2)
    orders, effects = c.orders_for("a", set(), now=2)
    assert not orders and changed(effects) == {"t1": "killed"}
    assert c.nodes["a"].free_cores == 1
    c.check_invariants()


def test_kill_of_an_unknown_task():
    with pytest.raises(UnknownTask):
        cluster_with(a=1).on_kill("nope", now=0)


def test_silent_node_goes_offline_tasks_lost_and_queue_moves_to_other_nodes():
    c = cluster_with(a=1, b=1)
    c.on_submit([task(1, node="b"), task(2)])
    c.schedule()  # t1 on b (named), t2 on a
    c.on_heartbeat(NodeReport("a", (0,)), {"t2"}, now=29)
    assert changed(c.on_tick(now=29)) == {}
    effects = c.on_tick(now=31)
    assert changed(effects) == {"t1": "lost"}
    assert any(isinstance(e, NodeChanged) and e.node.state is NodeState.OFFLINE for e in effects)
    assert "node b stopped answering" in c.tasks["t1"].error
    c.on_finished("a", Finished("t2", 32, exit_code=0))
    c.on_submit([task(3)])
    c.schedule()
    assert c.tasks["t3"].node == "a"
    c.check_invariants()


def test_lost_task_takes_its_real_outcome_when_the_node_returns():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.schedule()
    c.on_started("a", Started("t1", 1))
    c.on_tick(now=31)
    assert c.tasks["t1"].state is TaskState.LOST
    # back, still running it: running again, cores taken again
    assert changed(c.on_heartbeat(NodeReport("a", (0,)), {"t1"}, now=40)) == {"t1": "running"}
    assert c.nodes["a"].free_cores == 0
    assert changed(c.on_finished("a", Finished("t1", 41, exit_code=5))) == {"t1": "failed"}
    c.check_invariants()


def test_lost_task_finished_while_away_reports_its_exit_code():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.schedule()
    c.on_tick(now=31)
    c.on_heartbeat(NodeReport("a", (0,)), {"t1"}, now=40)
    assert changed(c.on_finished("a", Finished("t1", 41, exit_code=0))) == {"t1": "completed"}
    c.check_invariants()


def test_killing_a_lost_task_is_final_and_kills_it_if_the_node_returns():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.schedule()
    c.on_tick(now=31)
    assert changed(c.on_kill("t1", now=32)) == {"t1": "killed"}
    c.on_heartbeat(NodeReport("a", (0,)), {"t1"}, now=40)
    assert c.strays("a", {"t1"}, frozenset()) == ["t1"]
    assert c.strays("a", {"t1"}, frozenset({"t1"})) == []  # already ending there: nothing to order
    assert changed(c.on_finished("a", Finished("t1", 41, killed=True))) == {}
    c.check_invariants()


def test_nothing_goes_to_an_offline_node():
    c = cluster_with(a=2)
    c.on_tick(now=31)
    c.on_submit([task(1)])
    assert changed(c.schedule()) == {}
    orders, _ = c.orders_for("a", set(), now=31)
    assert not orders


def test_restore_after_host_restart_keeps_queue_order_and_core_ownership():
    c = cluster_with(a=2)
    c.on_submit([task(1), task(2), task(3)])
    c.schedule()
    c.on_started("a", Started("t1", 1))
    saved_nodes = list(c.nodes.values())
    saved_tasks = [t for t in c.tasks.values()]
    fresh = Cluster(TIMEOUT)
    fresh.restore(saved_nodes, saved_tasks, now=100)
    assert list(fresh.queue) == ["t3"]
    assert fresh.nodes["a"].free_cores == 0
    fresh.check_invariants()
    # the restored node has a full timeout to reconnect
    assert changed(fresh.on_tick(now=129)) == {}


def test_duplicate_reports_are_harmless():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.schedule()
    c.on_finished("a", Finished("t1", 2, exit_code=0))
    assert c.on_finished("a", Finished("t1", 2, exit_code=0)) == []
    assert c.on_started("a", Started("t1", 1)) == []
    c.check_invariants()


def test_reports_from_the_wrong_node_are_ignored():
    c = cluster_with(a=1, b=1)
    c.on_submit([task(1, node="a")])
    c.schedule()
    assert c.on_finished("b", Finished("t1", 2, exit_code=0)) == []
    assert c.tasks["t1"].state is TaskState.ASSIGNING
    c.check_invariants()


def test_no_repeated_kill_order_for_a_task_already_ending():
    # without this, a runner's long-poll would return at once, again and again, for the whole
    # kill grace period
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.schedule()
    c.on_started("a", Started("t1", 1))
    c.on_kill("t1", now=2)
    orders, _ = c.orders_for("a", {"t1"}, now=2, ending=frozenset({"t1"}))
    assert not orders
    c.check_invariants()


def test_a_second_runner_under_an_online_nodes_name_is_refused_until_the_node_goes_silent():
    c = Cluster(TIMEOUT)
    c.on_heartbeat(NodeReport("a", (0, 1), runner_id="first"), set(), now=0.0)
    c.on_submit([task(1)])
    c.schedule()
    before = (c.nodes["a"].last_heartbeat, c.nodes["a"].cores.offered, c.tasks["t1"].state)
    with pytest.raises(NodeTaken, match="node a is served by another runner"):
        c.on_heartbeat(NodeReport("a", (0, 1, 2, 3), runner_id="second"), set(), now=1.0)
    assert (c.nodes["a"].last_heartbeat, c.nodes["a"].cores.offered, c.tasks["t1"].state) == before  # nothing changed
    c.on_heartbeat(NodeReport("a", (0, 1), runner_id="first"), {"t1"}, now=2.0)  # the same runner, restarted
    c.on_heartbeat(NodeReport("a", (0, 1)), {"t1"}, now=3.0)  # a runner of an earlier release says no ID
    c.on_tick(now=3.0 + TIMEOUT + 1)  # the first runner went silent: the node is offline, its task lost
    assert c.nodes["a"].state is NodeState.OFFLINE
    c.on_heartbeat(NodeReport("a", (0, 1, 2, 3), runner_id="second"), set(), now=40.0)  # a replacement
    assert c.nodes["a"].state is NodeState.ONLINE and c.nodes["a"].runner_id == "second"
    with pytest.raises(NodeTaken):
        c.on_heartbeat(NodeReport("a", (0, 1), runner_id="first"), {"t1"}, now=41.0)
    c.check_invariants()


def test_a_leaving_runner_gets_nothing_new_and_what_it_never_received_goes_elsewhere():
    c = cluster_with(a=2)
    c.on_submit([task(1), task(2), task(3, node="a")])
    c.schedule()
    c.on_heartbeat(NodeReport("a", (0, 1)), set(), now=0.5)
    c.on_started("a", Started("t1", 1.0))  # t1 runs there; t2 was assigned but never received
    c.on_heartbeat(NodeReport("a", (0, 1), leaving=True), {"t1"}, now=2.0)
    assert c.tasks["t1"].state is TaskState.RUNNING  # it runs on under the keeper
    assert c.tasks["t2"].state is TaskState.PENDING and c.tasks["t2"].attempt == 2  # a new attempt, no retry used
    assert not c.tasks["t2"].attempts[0].delivered
    c.schedule()
    assert c.tasks["t2"].state is TaskState.PENDING and "runner of node a stopped" in c.why_pending("t3")
    c.on_heartbeat(NodeReport("b", (0,)), set(), now=3.0)
    c.schedule()
    assert (c.tasks["t2"].state, c.tasks["t2"].node) == (TaskState.ASSIGNING, "b")
    c.on_heartbeat(NodeReport("a", (0, 1)), {"t1"}, now=4.0)  # a runner is back on a
    c.schedule()
    assert (c.tasks["t3"].state, c.tasks["t3"].node) == (TaskState.ASSIGNING, "a")
    c.check_invariants()
