"""Short array tasks queued on a node ahead of its free cores (core/ahead.py), across faults.

Every run of a task appends one line `<attempt> <node> <start time>` to `<shared>/<id>.runs`, so a
second run of a task shows as a second line, whatever the host believes. Runners offer 2 cores
each, so a 200-task array keeps every core busy and the host queues the rest ahead; each test
waits until `hakuriver_tasks_queued_ahead_total` is above zero before it does its damage, so the
queued-ahead path is known to be in play.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hakuriver import protocol as p
from support import start_namespaced, wait_until

#: one line per run, then a short nap: short enough to be queued ahead (< 0.25 s), long enough that
#: a 200-task array on four cores lasts a few seconds, so there is time to break something mid-array
RUN = 'echo "$HAKURIVER_ATTEMPT $HAKURIVER_NODE $(date +%s.%N)" >> "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.runs"; ' \
      'sleep 0.05'
TASKS = 200
#: final states a task keeps (`lost` may still change: its node may come back with its real outcome)
DONE = ("completed", "failed", "killed", "timeout")


def submit_array(cluster, *flags: str) -> str:  # noqa: ANN001
    return cluster.submit("--array", f"1-{TASKS}", *flags, "--", "sh", "-c", RUN)


def queued_ahead(cluster) -> float:  # noqa: ANN001
    """The host's count of tasks queued ahead since it started (0 while it cannot be reached)."""
    return metric(cluster, "hakuriver_tasks_queued_ahead")


def metric(cluster, name: str) -> float:  # noqa: ANN001
    """A counter of the host's /metrics (0 while the host cannot be reached)."""
    try:
        r = httpx.get(f"{cluster.url}{p.METRICS}", headers={"Authorization": f"Bearer {cluster.token}"}, timeout=5)
    except httpx.HTTPError:
        return 0.0
    assert r.status_code == 200, r.text
    for family in text_string_to_metric_families(r.text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError(f"no {name}_total in /metrics")


def wait_queued_ahead(cluster) -> float:  # noqa: ANN001
    return wait_until(lambda: queued_ahead(cluster), 20, "tasks queued ahead (hakuriver_tasks_queued_ahead_total > 0)")


def batch(cluster, batch_id: str) -> list:  # noqa: ANN001
    return cluster.query("SELECT * FROM tasks WHERE batch_id = ? ORDER BY task_id", batch_id)


def wait_all_final(cluster, batch_id: str, states: tuple[str, ...] = DONE, timeout: float = 60) -> list:  # noqa: ANN001
    def done() -> list | None:
        rows = batch(cluster, batch_id)
        return rows if len(rows) == TASKS and all(r["state"] in states for r in rows) else None
    try:
        return wait_until(done, timeout, f"every task of batch {batch_id} in {states}")
    except AssertionError:
        left = [(r["task_id"], r["state"], r["node"]) for r in batch(cluster, batch_id) if r["state"] not in states]
        raise AssertionError(f"{len(left)} tasks not in {states}, e.g. {left[:10]}") from None


def runs(cluster, task_id: str) -> list[tuple[int, str, float]]:  # noqa: ANN001
    """(attempt, node, start time) of every run of the task, in the order they began."""
    path = Path(cluster.shared, f"{task_id}.runs")
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        attempt, node, started = line.split()
        found.append((int(attempt), node, float(started)))
    return found


def assert_each_completed_once(cluster, rows: list) -> None:  # noqa: ANN001
    twice = {r["task_id"]: runs(cluster, r["task_id"]) for r in rows if len(runs(cluster, r["task_id"])) != 1}
    assert not twice, f"{len(twice)} tasks did not run exactly once: {dict(list(twice.items())[:5])}"
    bad = [(r["task_id"], r["state"], r["error"]) for r in rows if (r["state"], r["exit_code"]) != ("completed", 0)]
    assert not bad, f"{len(bad)} tasks not completed: {bad[:5]}"
    for r in rows:
        [(attempt, node, _)] = runs(cluster, r["task_id"])
        assert (attempt, node) == (r["attempt"], r["node"]), (r["task_id"], attempt, node, r["attempt"], r["node"])


def two_nodes(cluster, cores: int = 2) -> None:  # noqa: ANN001
    cluster.start_host()
    for name in ("a", "b"):
        cluster.start_runner(name, cores)
    cluster.wait_online("a", "b")


# ---- 1. no fault --------------------------------------------------------------------------------
def test_a_short_array_is_queued_ahead_and_each_task_runs_once(cluster):
    c = cluster
    two_nodes(c)
    batch_id = submit_array(c)
    rows = wait_all_final(c, batch_id)
    assert queued_ahead(c) > 0  # the path under test was taken
    assert_each_completed_once(c, rows)
    assert {r["node"] for r in rows} == {"a", "b"}
    wait_until(lambda: not c.task_processes(), 15, "no task process left")


# ---- 2. a runner killed mid-array -----------------------------------------------------------------
@pytest.mark.parametrize("down", ["briefly", "until-offline"])
def test_a_runner_killed_mid_array_loses_nothing_and_runs_nothing_twice(cluster, down):
    """The keeper outlives its runner: what it held queued ahead it starts as its cores free (or
    hands back unrun), and the new runner reports it. Down past the heartbeat timeout, the node's
    tasks are `lost` first, then take their real outcomes; one that never started there is queued
    again. Without --retries nothing may run twice either way (README, Guarantees)."""
    c = cluster  # heartbeat timeout 2 s
    two_nodes(c)
    batch_id = submit_array(c)
    wait_queued_ahead(c)
    c.runners["a"].stop(signal.SIGKILL)
    if down == "until-offline":
        wait_until(lambda: c.nodes()["a"]["state"] == "offline", 20, "node a offline")
        wait_until(lambda: any(r["state"] == "lost" and r["node"] == "a" for r in batch(c, batch_id)), 5,
                   "tasks of node a lost")
    c.start_runner("a", 2)
    c.wait_online("a")
    rows = wait_all_final(c, batch_id)
    assert_each_completed_once(c, rows)
    wait_until(lambda: not c.task_processes(), 15, "no task process left")


# ---- 3. the host restarted mid-array --------------------------------------------------------------
def test_a_host_restarted_mid_array_loses_nothing_and_runs_nothing_twice(cluster):
    """The restarted host finds the tasks queued ahead in its database as `assigning` behind a busy
    core and puts them back in their lines; results that came in meanwhile wait in the runners'
    journals."""
    c = cluster
    two_nodes(c)
    batch_id = submit_array(c)
    wait_queued_ahead(c)
    c.host.stop(signal.SIGKILL)
    c.start_host()
    rows = wait_all_final(c, batch_id)
    assert_each_completed_once(c, rows)
    wait_until(lambda: not c.task_processes(), 15, "no task process left")


# ---- 4. a node's link cut mid-array ----------------------------------------------------------------
def lost_when(cluster, batch_id: str, node: str) -> dict[tuple[str, int], float]:  # noqa: ANN001
    """(task ID, attempt) -> when the host declared that attempt on `node` lost (the attempt's end),
    for every attempt of the batch, current or past, lost there now."""
    found = {}
    for r in batch(cluster, batch_id):
        if r["state"] == "lost" and r["node"] == node:
            found[r["task_id"], r["attempt"]] = r["finished_at"]
        for old in json.loads(r["attempts"]):
            if old["state"] == "lost" and old["node"] == node:
                found[r["task_id"], old["attempt"]] = old["finished_at"]
    return found


@pytest.mark.parametrize("retries", [0, 1])
def test_a_node_cut_off_mid_array_runs_no_queued_task_after_it_is_given_up(cluster, netlab, retries):
    """The node holds tasks queued ahead when its link goes down. Its keeper starts each as its core
    frees, or hands it back unrun, within the launch's wait limit (1 s here): always before the
    host, 2 s after the last heartbeat, declares the node's tasks lost. On healing, the results
    of those that ran come back.

    Without --retries a lost task is never placed again while it may still run (README,
    Guarantees): each task runs once and ends with its real outcome, `completed`.

    With --retries 1 a lost attempt is retried on the other node at once: at-least-once, by design
    (README, Guarantees: "both attempts may have run"), for tasks queued ahead as for tasks
    running when the link went down. What queuing ahead adds, and what is checked here, is that a
    task held on the cut-off node never *begins* there after the host has given it up: every run
    of a lost attempt began before the host declared it lost, so once another copy can start, no
    queued copy can start any more. And no attempt ever runs twice.
    """
    c = cluster  # heartbeat 0.5 s, timeout 2 s: wait limit of tasks queued ahead 1 s
    start_namespaced(c, netlab, "a", "b")
    batch_id = submit_array(c, "--retries", str(retries))
    wait_queued_ahead(c)
    # more of the batch on host-b than it has cores: some of them wait there behind a busy core
    wait_until(lambda: sum(r["node"] == "host-b" and r["state"] in ("assigning", "running")
                           for r in batch(c, batch_id)) > 2, 20, "tasks queued ahead on host-b")
    netlab.cut("b")
    wait_until(lambda: c.nodes()["host-b"]["state"] == "offline", 20, "host-b offline")
    lost = wait_until(lambda: lost_when(c, batch_id, "host-b"), 10, "tasks of host-b lost")
    # The cut outlasts the runner's own request timeout (2 x interval + 2 s), so that no answer the
    # host sent before the cut reaches the node late: a launch order delayed by the network beyond
    # the heartbeat timeout is a documented limitation (README, Limitations), not what is tested.
    time.sleep(3.5)
    netlab.heal("b")
    wait_until(lambda: c.nodes()["host-b"]["state"] == "online", 30, "host-b back online")
    rows = wait_all_final(c, batch_id)
    bad = [(r["task_id"], r["state"], r["error"]) for r in rows if (r["state"], r["exit_code"]) != ("completed", 0)]
    assert not bad, f"{len(bad)} tasks not completed: {bad[:5]}"
    for r in rows:
        task, ran = r["task_id"], runs(c, r["task_id"])
        attempts = [attempt for attempt, _, _ in ran]
        assert len(attempts) == len(set(attempts)), (task, ran)  # the same attempt never runs twice
        assert (r["attempt"], r["node"]) in [(attempt, node) for attempt, node, _ in ran], (task, ran, r["attempt"])
        for attempt, node, began in ran:
            given_up = lost.get((task, attempt))
            if node == "host-b" and given_up is not None:
                assert began < given_up, (task, ran, given_up)  # began before the host gave that attempt up
        if retries == 0 or not any(key[0] == task for key in lost):
            assert len(ran) == 1, (task, ran)
        else:  # retried once: its lost attempt on host-b may have run too, behind the cut
            assert len(ran) <= 2 and all(node == "host-b" for _, node, _ in ran[:-1]), (task, ran)
    wait_until(lambda: not c.task_processes(), 15, "no task process left")


# ---- 5. tasks handed back unrun ----------------------------------------------------------------------
#: the 60th task runs 3 s, three times the wait limit: the tasks queued behind its core are handed back
WITH_A_LONG_ONE = RUN + '; [ "$HAKURIVER_ARRAY_INDEX" -ne 60 ] || sleep 3'


def handed_back(cluster) -> float:  # noqa: ANN001
    """The host's count of tasks handed back unrun since it started."""
    return metric(cluster, "hakuriver_tasks_handed_back")


def test_tasks_queued_behind_a_long_one_are_handed_back_and_run_once(cluster):
    c = cluster
    two_nodes(c)
    batch_id = c.submit("--array", f"1-{TASKS}", "--", "sh", "-c", WITH_A_LONG_ONE)
    rows = wait_all_final(c, batch_id)
    assert queued_ahead(c) > 0 and handed_back(c) > 0  # the paths under test were taken
    assert_each_completed_once(c, rows)


def test_tasks_handed_back_while_their_runner_is_down_run_once(cluster):
    """The runner holding the long task is killed while tasks wait behind it: the keeper hands
    them back with no runner up, the node goes offline (its tasks `lost`), and once a new runner
    reports them handed back, the host queues them again (not counted against --retries)."""
    c = cluster  # heartbeat timeout 2 s, wait limit 1 s
    two_nodes(c)
    batch_id = c.submit("--array", f"1-{TASKS}", "--", "sh", "-c", WITH_A_LONG_ONE)
    wait_queued_ahead(c)

    def long_one_running():  # noqa: ANN202
        rows = c.query("SELECT * FROM tasks WHERE batch_id = ? AND state = 'running' "
                       "AND json_extract(env, '$.HAKURIVER_ARRAY_INDEX') = '60'", batch_id)
        return rows[0] if rows and runs(c, rows[0]["task_id"]) else None
    node = wait_until(long_one_running, 20, "the long task running")["node"]
    c.runners[node].stop(signal.SIGKILL)
    wait_until(lambda: c.nodes()[node]["state"] == "offline", 20, f"node {node} offline")
    wait_until(lambda: any(r["state"] == "lost" and r["node"] == node for r in batch(c, batch_id)), 5,
               f"tasks of node {node} lost")
    c.start_runner(node, 2)
    c.wait_online(node)
    rows = wait_all_final(c, batch_id)
    # the path under test was taken: tasks of that node were handed back, each history saying so
    back = [a for r in rows for a in json.loads(r["attempts"]) if a["node"] == node and "handed back" in a["error"]]
    assert back and all(not a["delivered"] for a in back), back[:3]
    assert_each_completed_once(c, rows)
    wait_until(lambda: not c.task_processes(), 15, "no task process left")
