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
from support import wait_until

#: one line per run, then a short nap: short enough to be queued ahead (< 0.25 s), long enough that
#: a 200-task array on four cores lasts a few seconds, so there is time to break something mid-array
RUN = 'echo "$HAKURIVER_ATTEMPT $HAKURIVER_NODE $(date +%s.%N)" >> "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.runs"; ' \
      'sleep 0.05'
TASKS = 200
FINAL = ("completed", "failed", "killed", "timeout", "lost")


def submit_array(cluster, *flags: str) -> str:  # noqa: ANN001
    return cluster.submit("--array", f"1-{TASKS}", *flags, "--", "sh", "-c", RUN)


def queued_ahead(cluster) -> float:  # noqa: ANN001
    """The host's count of tasks queued ahead since it started (0 while it cannot be reached)."""
    try:
        r = httpx.get(f"{cluster.url}{p.METRICS}", headers={"Authorization": f"Bearer {cluster.token}"}, timeout=5)
    except httpx.HTTPError:
        return 0.0
    assert r.status_code == 200, r.text
    for family in text_string_to_metric_families(r.text):
        if family.name == "hakuriver_tasks_queued_ahead":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError("no hakuriver_tasks_queued_ahead_total in /metrics")


def wait_queued_ahead(cluster) -> float:  # noqa: ANN001
    return wait_until(lambda: queued_ahead(cluster), 20, "tasks queued ahead (hakuriver_tasks_queued_ahead_total > 0)")


def batch(cluster, batch_id: str) -> list:  # noqa: ANN001
    return cluster.query("SELECT * FROM tasks WHERE batch_id = ? ORDER BY task_id", batch_id)


def wait_all_final(cluster, batch_id: str, states: tuple[str, ...] = FINAL, timeout: float = 60) -> list:  # noqa: ANN001
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
    c.start_runner("a", 2)
    c.wait_online("a")
    rows = wait_all_final(c, batch_id, ("completed",))
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
    rows = wait_all_final(c, batch_id, ("completed",))
    assert_each_completed_once(c, rows)
    wait_until(lambda: not c.task_processes(), 15, "no task process left")
