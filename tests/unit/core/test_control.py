"""Controlling tasks (SPEC §11) in the pure core: retries and attempts, --after, throttles, why pending.

One readable scenario per test; every test ends with check_invariants(). The random
interleavings are the state machine's job (test_cluster_machine.py).
"""

from __future__ import annotations

import copy

import pytest

from hakuriver.core.cluster import Cluster, Finished, NodeReport, Started, SubmitRefused, TaskChanged
from hakuriver.core.model import Task, run_key
from hakuriver.core.states import TaskState

TIMEOUT = 30.0


def task(n: int, cores: int = 1, **fields) -> Task:  # noqa: ANN003
    return Task(task_id=f"t{n}", command="true", args=[], env={}, cores=cores, submitted_at=float(n), **fields)


def batch(batch_id: str, *ns: int, throttle: int = 0, **fields) -> list[Task]:  # noqa: ANN003
    return [task(n, batch_id=batch_id, throttle=throttle, **fields) for n in ns]


def cluster_with(**nodes: int) -> Cluster:
    c = Cluster(TIMEOUT)
    for name, cores in nodes.items():
        c.on_heartbeat(NodeReport(name, tuple(range(cores))), set(), now=0.0)
    return c


def launch(c: Cluster, node: str, now: float = 1.0) -> list[str]:
    """The runner takes its orders and starts every launch: the run keys it now holds."""
    orders, _ = c.orders_for(node, set(), now)
    for t in orders.launch:
        c.on_started(node, Started(t.task_id, now, attempt=t.attempt))
    return [t.run_key for t in orders.launch]


def complete(c: Cluster, node: str, task_id: str, now: float = 2.0) -> None:
    c.on_finished(node, Finished(task_id, now, exit_code=0, attempt=c.tasks[task_id].attempt))


def states(effects) -> dict[str, str]:  # noqa: ANN001
    return {e.task.task_id: e.task.state.value for e in effects if isinstance(e, TaskChanged)}


# ---- retries and attempts ------------------------------------------------------------------
def test_a_task_retried_after_failed_timeout_and_lost_completes_with_three_attempts_listed():
    c = cluster_with(a=1, b=1)
    t1 = task(1, retries=3)
    c.on_submit([t1])
    c.schedule()
    assert launch(c, "a") == ["t1"]  # attempt 1 is named by the task ID alone
    c.on_finished("a", Finished("t1", 2, exit_code=3))
    assert (t1.state, t1.attempt, list(c.queue)) == (TaskState.PENDING, 2, ["t1"])

    c.schedule()
    assert launch(c, "a", now=3) == ["t1.2"]
    c.on_finished("a", Finished("t1", 4, signal=15, timed_out=True, error="time limit of 1s reached", attempt=2))
    assert (t1.state, t1.attempt) == (TaskState.PENDING, 3)

    c.schedule()
    assert launch(c, "a", now=5) == ["t1.3"]
    c.on_heartbeat(NodeReport("b", (0,)), set(), now=30)
    c.on_tick(now=40)  # a has been silent for 40 s
    assert (t1.state, t1.attempt) == (TaskState.PENDING, 4)

    c.schedule()
    assert launch(c, "b", now=41) == ["t1.4"]
    complete(c, "b", "t1", now=42)
    assert t1.state is TaskState.COMPLETED and "t1" not in c.tasks
    assert [(a.attempt, a.state, a.node) for a in t1.attempts] == [
        (1, TaskState.FAILED, "a"), (2, TaskState.TIMEOUT, "a"), (3, TaskState.LOST, "a")]
    assert t1.attempts[1].error == "time limit of 1s reached" and "stopped answering" in t1.attempts[2].error
    c.check_invariants()


def test_without_retries_a_failed_timed_out_or_lost_task_ends_so():
    c = cluster_with(a=3)
    c.on_submit([task(1), task(2), task(3)])
    c.schedule()
    launch(c, "a")
    c.on_finished("a", Finished("t1", 2, exit_code=1))
    c.on_finished("a", Finished("t2", 2, timed_out=True, signal=15))
    assert states(c.on_tick(now=31)) == {"t3": "lost"}
    assert not c.queue and set(c.tasks) == {"t3"}  # lost stays in memory for its node's return
    c.check_invariants()


@pytest.mark.parametrize("outcome", [
    Finished("t1", 3, signal=15, error="killed by user", killed=True),
    Finished("t1", 3, exit_code=1),  # it failed on its own before the kill reached it
])
def test_a_task_the_user_killed_is_not_retried(outcome):
    c = cluster_with(a=1)
    c.on_submit([task(1, retries=2)])
    c.schedule()
    launch(c, "a")
    c.on_kill("t1", now=2)
    orders, _ = c.orders_for("a", {"t1"}, now=2)
    assert orders.kill == ["t1"]
    effects = c.on_finished("a", outcome)
    assert states(effects) == {"t1": outcome.state.value}
    assert "t1" not in c.tasks and not c.queue
    c.check_invariants()


def test_a_kill_order_names_the_attempt_by_its_run_key():
    c = cluster_with(a=1)
    c.on_submit([task(1, retries=1)])
    c.schedule()
    launch(c, "a")
    c.on_finished("a", Finished("t1", 2, exit_code=1))
    c.schedule()
    assert launch(c, "a", now=3) == ["t1.2"]
    c.on_kill("t1", now=4)
    orders, _ = c.orders_for("a", {"t1.2"}, now=4)
    assert orders.kill == ["t1.2"] and not orders.launch
    assert c.orders_for("a", {"t1.2"}, now=5, ending=frozenset({"t1.2"}))[0].kill == [], "already being killed"
    c.on_finished("a", Finished("t1", 6, signal=15, killed=True, attempt=2))
    assert "t1" not in c.tasks
    c.check_invariants()


def test_a_lost_task_killed_while_pending_for_its_next_attempt_is_killed_not_retried():
    c = cluster_with(a=1)
    t1 = task(1, retries=1)
    c.on_submit([t1])
    c.schedule()
    launch(c, "a")
    c.on_tick(now=31)  # lost, retried: pending for attempt 2
    assert states(c.on_kill("t1", now=32)) == {"t1": "killed"}
    assert t1.attempt == 2 and [a.state for a in t1.attempts] == [TaskState.LOST]
    c.check_invariants()


def retried_elsewhere() -> tuple[Cluster, Task]:
    """t1 ran on a, a went silent, and t1's second attempt now runs on b."""
    c = cluster_with(a=1)
    t1 = task(1, retries=1)
    c.on_submit([t1])
    c.schedule()
    launch(c, "a")
    c.on_heartbeat(NodeReport("b", (0,)), set(), now=30)
    c.on_tick(now=31)
    c.schedule()
    assert (t1.node, launch(c, "b", now=32)) == ("b", ["t1.2"])
    return c, t1


def test_strays_names_the_old_attempt_when_its_node_comes_back_still_running_it():
    c, t1 = retried_elsewhere()
    c.on_heartbeat(NodeReport("a", (0,)), {"t1"}, now=33)  # a is back, still running attempt 1
    assert t1.node == "b" and t1.state is TaskState.RUNNING, "attempt 1 was not taken back"
    assert c.strays("a", {"t1"}, frozenset()) == [run_key("t1", 1)]
    assert c.strays("a", {"t1"}, frozenset({"t1"})) == [], "already being killed"
    assert c.strays("b", {"t1.2"}, frozenset()) == [], "the current attempt is no stray"
    c.check_invariants()


def test_the_late_result_of_an_old_attempt_goes_to_the_history_only():
    c, t1 = retried_elsewhere()
    current = copy.deepcopy(t1)
    c.on_heartbeat(NodeReport("a", (0,)), {"t1"}, now=33)
    assert c.on_started("a", Started("t1", 33, attempt=1)) == []
    effects = c.on_finished("a", Finished("t1", 34, signal=15, killed=True, attempt=1))  # killed as a stray
    assert states(effects) == {"t1": "running"}, "the record changes: its history"
    assert (t1.state, t1.node, t1.core_ids, t1.attempt, t1.error) == (
        current.state, current.node, current.core_ids, current.attempt, current.error)
    old = t1.attempts[0]
    assert (old.attempt, old.state, old.node, old.finished_at) == (1, TaskState.KILLED, "a", 34)
    assert old.error.startswith("node a stopped answering") and old.error.endswith("; then killed")
    complete(c, "b", "t1", now=35)
    assert t1.state is TaskState.COMPLETED
    c.check_invariants()


def test_the_start_of_an_old_attempt_does_not_start_the_new_one_on_the_same_node():
    c = cluster_with(a=1)
    t1 = task(1, retries=1)
    c.on_submit([t1])
    c.schedule()
    launch(c, "a")
    c.on_tick(now=31)  # lost, retried
    c.on_heartbeat(NodeReport("a", (0,)), {"t1"}, now=32)  # back, attempt 1 still there
    c.schedule()
    assert (t1.node, t1.state, t1.attempt) == ("a", TaskState.ASSIGNING, 2)
    assert c.on_started("a", Started("t1", 33, attempt=1)) == []
    assert (t1.state, t1.started_at) == (TaskState.ASSIGNING, None), "attempt 2 has not started"
    assert c.strays("a", {"t1"}, frozenset()) == ["t1"]
    c.check_invariants()


# ---- dependencies --------------------------------------------------------------------------
def test_a_chain_of_three_waits_in_turn_across_a_host_restart():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.on_submit([task(2, after=["t1"])])
    c.on_submit([task(3, after=["t2"])])
    assert list(c.queue) == ["t1"] and set(c.deps.waiting) == {"t2", "t3"}
    c.schedule()
    launch(c, "a")
    complete(c, "a", "t1")
    assert list(c.queue) == ["t2"]

    # the host restarts: t1 is final, so only the store says how it ended (HostService.restore)
    fresh = Cluster(TIMEOUT)
    fresh.restore(copy.deepcopy(list(c.nodes.values())), copy.deepcopy(list(c.tasks.values())), now=5,
                  outcomes={"t1": TaskState.COMPLETED})
    assert list(fresh.queue) == ["t2"] and set(fresh.deps.waiting) == {"t3"}
    fresh.on_heartbeat(NodeReport("a", (0,)), set(), now=6)
    fresh.schedule()
    launch(fresh, "a", now=6)
    complete(fresh, "a", "t2", now=7)
    assert list(fresh.queue) == ["t3"] and not fresh.deps.waiting
    fresh.check_invariants()


def test_a_failed_dependency_fails_its_dependents_down_the_chain_without_running_them():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    c.on_submit([task(2, after=["t1"])])
    c.on_submit([task(3, after=["t2"])])
    c.schedule()
    launch(c, "a")
    effects = c.on_finished("a", Finished("t1", 2, exit_code=1))
    assert states(effects) == {"t1": "failed", "t2": "failed", "t3": "failed"}
    failed = {e.task.task_id: e.task for e in effects if isinstance(e, TaskChanged)}
    assert failed["t2"].error == "dependency t1 ended failed"
    assert failed["t3"].error == "dependency t2 ended failed"
    assert failed["t3"].node == "" and failed["t3"].started_at is None
    assert c.tasks == {} and not c.queue and not c.deps.waiting
    c.check_invariants()


def test_a_failure_cascades_down_a_long_chain_whole():
    """A script submitting each step --after the one before: recursion would stop half way."""
    c = cluster_with(a=1)
    c.on_submit([task(0)])
    for n in range(1, 2000):
        c.on_submit([task(n, after=[f"t{n - 1}"])])
    c.schedule()
    launch(c, "a")
    effects = c.on_finished("a", Finished("t0", 2, exit_code=1))
    assert len(states(effects)) == 2000 and c.tasks == {}
    c.check_invariants()


def test_a_dependency_that_already_ended_is_told_by_outcomes():
    c = cluster_with(a=1)
    c.on_submit([task(1, after=["old"])], outcomes={"old": TaskState.COMPLETED})
    effects = c.on_submit([task(2, after=["gone"])], outcomes={"gone": TaskState.TIMEOUT})
    assert list(c.queue) == ["t1"]
    assert states(effects) == {"t2": "failed"} and effects[-1].task.error == "dependency gone ended timeout"
    c.check_invariants()


def test_an_unknown_dependency_refuses_the_submission_and_changes_nothing():
    c = cluster_with(a=1)
    c.on_submit([task(1)])
    with pytest.raises(SubmitRefused, match="--after: no task or batch with ID nope"):
        c.on_submit([task(2), task(3, after=["t1", "nope"])])
    assert set(c.tasks) == {"t1"} and list(c.queue) == ["t1"] and not c.deps.waiting
    c.check_invariants()


def test_a_batch_dependency_waits_for_every_task_of_the_batch():
    c = cluster_with(a=2)
    c.on_submit(batch("b1", 1, 2))
    c.on_submit([task(3, after=["b1"])])
    c.schedule()
    launch(c, "a")
    complete(c, "a", "t1")
    assert "t3" in c.deps and "t3" not in c.queue
    assert c.why_pending("t3") == "waiting for dependency b1 to complete"
    complete(c, "a", "t2")
    assert list(c.queue) == ["t3"]
    c.check_invariants()


def test_a_batch_dependency_fails_as_soon_as_one_task_of_it_does():
    c = cluster_with(a=2)
    c.on_submit(batch("b1", 1, 2))
    c.on_submit([task(3, after=["b1"])])
    c.schedule()
    launch(c, "a")
    effects = c.on_finished("a", Finished("t1", 2, exit_code=1))
    assert states(effects) == {"t1": "failed", "t3": "failed"}
    assert effects[-1].task.error == "dependency b1 ended failed"
    assert c.tasks["t2"].state is TaskState.RUNNING  # the rest of the batch runs on
    c.check_invariants()


def test_a_dependency_with_retries_left_is_waited_for_through_its_failures():
    c = cluster_with(a=1)
    c.on_submit([task(1, retries=1)])
    c.on_submit([task(2, after=["t1"])])
    c.schedule()
    launch(c, "a")
    c.on_finished("a", Finished("t1", 2, exit_code=1))  # attempt 1 failed: not the end of t1
    assert "t2" in c.deps
    c.schedule()
    launch(c, "a", now=3)
    complete(c, "a", "t1", now=4)
    assert list(c.queue) == ["t2"]
    c.check_invariants()


# ---- throttles -----------------------------------------------------------------------------
def test_a_throttle_of_two_runs_at_most_two_of_its_batch_on_eight_free_cores():
    c = cluster_with(a=8)
    c.on_submit(batch("b1", *range(1, 7), throttle=2))
    assert states(c.schedule()) == {"t1": "assigning", "t2": "assigning"}
    assert c.schedule() == [] and c.batch_running == {"b1": 2}
    launch(c, "a")
    complete(c, "a", "t1")
    assert states(c.schedule()) == {"t3": "assigning"}
    assert c.batch_running == {"b1": 2} and c.nodes["a"].free_cores == 6
    c.check_invariants()


def test_a_throttled_batch_leaves_its_cores_to_others():
    c = cluster_with(a=8)
    c.on_submit(batch("b1", 1, 2, 3, throttle=1))
    c.on_submit([task(4, cores=4)])
    assert states(c.schedule()) == {"t1": "assigning", "t4": "assigning"}
    c.check_invariants()


# ---- why pending ---------------------------------------------------------------------------
def test_why_pending_says_what_a_task_waits_for():
    c = cluster_with(a=2, b=1)
    c.on_submit([task(1, cores=2)])
    c.on_submit(batch("b1", 2, 3, throttle=1))
    c.on_submit([task(4, after=["t1", "b1"])])
    c.on_submit([task(5, cores=2)])
    c.schedule()  # t1 takes a and t2 takes b: t3 is throttled, t5 finds no room
    assert c.why_pending("t4") == "waiting for dependency b1 to complete (and 1 more)"
    assert c.why_pending("t3") == "throttled: its batch already runs 1 tasks, the most its --array %1 allows"
    assert c.why_pending("t5") == "needs 2 cores; the largest free block is 0 (on b)"
    assert c.why_pending("t1") == "", "not pending"
    c.check_invariants()


def test_why_pending_names_the_offline_node_a_task_asked_for():
    c = cluster_with(a=1, b=1)
    c.on_heartbeat(NodeReport("a", (0,)), set(), now=30)
    c.on_tick(now=31)  # b went silent
    c.on_submit([task(1, target_node="b")])
    c.schedule()
    assert c.why_pending("t1") == "node b is offline"
    c.check_invariants()


# ---- a launch that never reached its node --------------------------------------------------
def test_a_lost_task_that_never_started_runs_once_its_node_is_back_without_it():
    """Found by the chaos run: assigned just before its node went silent, the task was lost, and
    the node came back without it (the launch order never arrived), so nothing would ever end it."""
    c = cluster_with(a=1)
    t1 = task(1)  # no --retries: this is not a retry
    c.on_submit([t1])
    c.schedule()
    assert t1.state is TaskState.ASSIGNING
    c.on_tick(TIMEOUT + 1)
    assert t1.state is TaskState.LOST
    effects = c.on_heartbeat(NodeReport("a", (0,)), set(), now=TIMEOUT + 2)  # back, holding nothing
    assert states(effects) == {"t1": "pending"} and (t1.attempt, t1.retries_used) == (2, 0)
    [first] = t1.attempts
    assert (first.state, first.delivered, first.started_at) == (TaskState.LOST, False, None)
    assert "came back without it" in first.error
    c.schedule()
    assert launch(c, "a", now=TIMEOUT + 3) == ["t1.2"]
    complete(c, "a", "t1", now=TIMEOUT + 4)
    assert "t1" not in c.tasks
    c.check_invariants()


def test_a_lost_task_that_had_started_stays_lost_when_its_node_comes_back_without_it():
    c = cluster_with(a=1)
    t1 = task(1)
    c.on_submit([t1])
    c.schedule()
    launch(c, "a")
    c.on_tick(TIMEOUT + 2)
    c.on_heartbeat(NodeReport("a", (0,)), set(), now=TIMEOUT + 3)
    assert (t1.state, t1.attempt) == (TaskState.LOST, 1)  # it ran: running it again would be a second run
    c.check_invariants()


def test_with_retries_a_task_lost_before_it_started_is_retried_at_once_and_that_counts():
    """At the silence the host cannot know whether the launch arrived: the retry is spent."""
    c = cluster_with(a=1)
    t1 = task(1, retries=1)
    c.on_submit([t1])
    c.schedule()
    c.on_tick(TIMEOUT + 1)  # lost before it started: with a retry left, queued again at once
    assert (t1.state, t1.attempt, t1.retries_used) == (TaskState.PENDING, 2, 1)
    c.check_invariants()


def test_a_restart_fails_a_chain_whose_first_dependency_failed_while_the_host_was_down():
    """Found in review: the first waiting task failed during restore, and the next one, after it,
    found its dependency neither active nor among the outcomes, and the host could not start."""
    c = cluster_with(a=1)
    for t in (task(1), task(2, after=["t1"]), task(3, after=["t2"])):
        c.on_submit([t])
    pending = [copy.deepcopy(c.tasks[t]) for t in ("t2", "t3")]
    fresh = Cluster(TIMEOUT)
    effects = fresh.restore(copy.deepcopy(list(c.nodes.values())), pending, now=5.0, outcomes={"t1": TaskState.FAILED})
    assert states(effects) == {"t2": "failed", "t3": "failed"}
    assert not fresh.tasks
    fresh.check_invariants()


def test_after_a_batch_that_already_had_a_failure_fails_at_once():
    """The core remembers a batch's first failure while the batch runs: the store may not have it yet."""
    c = cluster_with(a=2)
    c.on_submit(batch("B", 1, 2))
    c.schedule()
    launch(c, "a")
    c.on_finished("a", Finished("t1", 2.0, exit_code=1))
    effects = c.on_submit([task(3, after=["B"])], now=3.0)  # no outcome given: B still runs
    assert c.batches.problems == {"B": {"t1": TaskState.FAILED}}
    assert states(effects)["t3"] == "failed" and "t3" not in c.tasks
    complete(c, "a", "t2")
    assert not c.batches.problems and not c.batches.left
    c.check_invariants()


# ---- who ran it (SPEC §12) -------------------------------------------------------------------
def test_the_unix_user_comes_from_the_start_or_the_finish_and_stays_with_its_attempt():
    c = cluster_with(a=1)
    t1, t2 = task(1, retries=1, owner="alice"), task(2, owner="bob")
    c.on_submit([t1, t2])
    c.schedule()
    orders, _ = c.orders_for("a", set(), 1.0)
    c.on_started("a", Started("t1", 1.0, unix_user="alice"))
    assert t1.unix_user == "alice"
    c.on_finished("a", Finished("t1", 2.0, exit_code=1))  # a finish that does not repeat it keeps it
    assert (t1.attempt, t1.unix_user, t1.attempts[0].unix_user) == (2, "", "alice")
    c.schedule()
    orders, _ = c.orders_for("a", {"t1"}, 3.0)
    # a short task: its start reached the host only inside its finish report
    (launched,) = orders.launch
    c.on_finished("a", Finished(launched.task_id, 4.0, exit_code=0, started_at=3.5, unix_user="nobody",
                                attempt=launched.attempt))
    assert (launched.state, launched.unix_user, launched.started_at) == (TaskState.COMPLETED, "nobody", 3.5)
    c.check_invariants()
