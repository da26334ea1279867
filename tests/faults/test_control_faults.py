"""Time limits and retries (SPEC §11) across faults: the host down, a node gone for good, a partition.

Every attempt of these tasks writes a marker `<shared>/<id>.<attempt>` holding its pid when it
starts, so that what ran where, and whether it is still running, is read from the node itself.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from support import keepers_below, start_namespaced, wait_until

#: writes its marker (its pid), then runs until the gate file `$0`, or its attempt's own `$0.N`, appears
GATED = 'echo $$ > "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.$HAKURIVER_ATTEMPT"; ' \
        'echo "$HAKURIVER_ATTEMPT" >> "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.runs"; ' \
        'echo "attempt $HAKURIVER_ATTEMPT"; ' \
        'while [ ! -e "$HAKURIVER_SHARED_DIR/$0" ] && [ ! -e "$HAKURIVER_SHARED_DIR/$0.$HAKURIVER_ATTEMPT" ]; ' \
        'do sleep 0.05; done'


def gated(cluster, gate: str, *flags: str) -> str:  # noqa: ANN001
    return cluster.submit(*flags, "--", "sh", "-c", GATED, gate)


def marker(cluster, task_id: str, attempt: int) -> Path:  # noqa: ANN001
    return Path(cluster.shared, f"{task_id}.{attempt}")


def marker_pid(cluster, task_id: str, attempt: int) -> int:  # noqa: ANN001
    path = marker(cluster, task_id, attempt)
    text = wait_until(lambda: path.exists() and path.read_text().strip(), 20, f"pid in {path}")
    return int(text)


def runs(cluster, task_id: str) -> list[str]:  # noqa: ANN001
    path = Path(cluster.shared, f"{task_id}.runs")
    return path.read_text().splitlines() if path.exists() else []


def gone(pid: int) -> bool:
    """Not running (a zombie's process has ended: only its parent has not collected it yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def processes_of(cluster, task_id: str) -> list[psutil.Process]:  # noqa: ANN001
    found = []
    for proc in cluster.task_processes():
        try:
            if proc.environ().get("HAKURIVER_TASK_ID") == task_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def history(cluster, task_id: str) -> list[dict]:  # noqa: ANN001
    return json.loads(cluster.task(task_id)["attempts"])


def status_json(cluster, task_id: str) -> dict:  # noqa: ANN001
    res = cluster.client("--status", task_id, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def wait_attempt_running(cluster, task_id: str, attempt: int, timeout: float = 40):  # noqa: ANN001, ANN201
    def reached():  # noqa: ANN202
        row = cluster.task(task_id)
        return row if row["attempt"] == attempt and row["state"] == "running" else None
    return wait_until(reached, timeout, f"attempt {attempt} of {task_id} running")


# ---- 1. time limits hold while the host is down ---------------------------------------------
def test_time_limit_is_enforced_on_the_node_while_the_host_is_down(cluster):
    c = cluster
    c.start_host()
    c.start_runner("a", 1)
    c.wait_online("a")
    task = c.submit("--time-limit", "5", "--", "sh", "-c",
                    'echo $$ > "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.pid"; sleep 60')
    c.wait_state(task, "running")
    pid_file = Path(c.shared, f"{task}.pid")
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "the task's pid file"))
    c.host.stop(signal.SIGKILL)
    assert not gone(pid)  # the premise: the task still runs, and nobody on the host side can end it now
    wait_until(lambda: gone(pid), 30, "the keeper to end the task at its time limit, host down")
    wait_until(lambda: not processes_of(c, task), 15, "the task's whole tree gone")
    assert c.runners["a"].alive()
    c.start_host()
    row = c.wait_state(task, "timeout", timeout=40)
    assert "time limit of 5s reached" in row["error"], row["error"]
    assert row["attempt"] == 1 and json.loads(row["attempts"]) == []
    assert row["exit_code"] is None


def test_an_attempt_timed_out_while_the_host_was_down_is_retried_after_it_returns(cluster):
    c = cluster
    c.start_host()
    c.start_runner("a", 1)
    c.wait_online("a")
    task = c.submit("--time-limit", "3", "--retries", "1", "--", "sh", "-c",
                    'echo $$ > "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.$HAKURIVER_ATTEMPT"; '
                    'echo "attempt $HAKURIVER_ATTEMPT"; [ "$HAKURIVER_ATTEMPT" -ge 2 ] || sleep 60')
    c.wait_state(task, "running")
    pid1 = marker_pid(c, task, 1)
    c.host.stop(signal.SIGKILL)
    assert not gone(pid1)
    wait_until(lambda: gone(pid1), 30, "the keeper to end the first attempt at its time limit, host down")
    assert not marker(c, task, 2).exists()  # nothing is retried without the host
    c.start_host()
    row = c.wait_state(task, "completed", "failed", "timeout", "lost", "killed", timeout=40)
    assert (row["state"], row["exit_code"], row["attempt"]) == ("completed", 0, 2), (row["state"], row["error"])
    [old] = json.loads(row["attempts"])
    assert (old["attempt"], old["state"], old["node"]) == (1, "timeout", "a"), old
    assert "time limit of 3s reached" in old["error"], old["error"]
    assert Path(old["stdout_path"]).read_text() == "attempt 1\n"
    assert Path(row["stdout_path"]).read_text() == "attempt 2\n"


def test_a_tree_that_ignores_sigterm_is_killed_after_the_grace_while_the_runner_is_down(cluster):
    c = cluster  # kill_grace 1 s
    c.start_host()
    c.start_runner("a", 1)
    c.wait_online("a")
    # `trap "" TERM`: ignored by the shell and, inherited through exec, by its child sleep too
    task = c.submit("--time-limit", "4", "--", "sh", "-c",
                    'trap "" TERM; echo $$ > "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.pid"; sleep 60; echo survived')
    c.wait_state(task, "running")
    pid_file = Path(c.shared, f"{task}.pid")
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "the task's pid file"))
    wait_until(lambda: len(processes_of(c, task)) == 2, 20, "the task's shell and its sleep")
    c.runners["a"].stop(signal.SIGKILL)  # its keeper lives on, and holds the deadline
    assert not gone(pid)  # the premise: the limit runs out with no runner on the node
    wait_until(lambda: gone(pid) and not processes_of(c, task), 30, "the keeper to SIGKILL the whole tree")
    c.start_runner("a", 1)
    row = c.wait_state(task, "timeout", timeout=40)
    assert "time limit of 4s reached" in row["error"], row["error"]
    assert "survived" not in Path(row["stdout_path"]).read_text()
    keeper_log = (c.root / "tmp-a" / ".hakuriver-runner-a" / "keeper.log").read_text()
    assert f"task {task} reached its time limit" in keeper_log


def test_time_limit_holds_when_the_keeper_is_killed(cluster):
    c = cluster
    c.start_host()
    c.start_runner("a", 1)
    c.wait_online("a")
    task = c.submit("--time-limit", "4", "--", "sh", "-c",
                    'echo $$ > "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.pid"; sleep 60')
    c.wait_state(task, "running")
    pid_file = Path(c.shared, f"{task}.pid")
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "the task's pid file"))
    [keeper] = keepers_below(str(c.root / "tmp-a"))
    keeper.kill()  # the deadline it held is gone with it: the runner takes the task over
    assert not gone(pid)
    row = c.wait_state(task, "timeout", "failed", "completed", "killed", timeout=40)
    assert row["state"] == "timeout", (row["state"], row["error"])
    assert "time limit of 4s reached" in row["error"], row["error"]
    wait_until(lambda: gone(pid) and not processes_of(c, task), 15, "the task's tree gone")


# ---- 2. a node killed for good mid-task ----------------------------------------------------------
@pytest.mark.parametrize("comes_back", [False, True], ids=["gone-for-good", "returns-later"])
def test_an_attempt_lost_with_its_node_is_retried_on_another_node(cluster, comes_back):
    c = cluster  # heartbeat timeout 2 s
    c.start_host()
    c.start_runner("a", 1)
    c.start_runner("b", 1)
    c.wait_online("a", "b")
    task = gated(c, "gate", "--retries", "1")
    first = c.wait_state(task, "running")
    dead, other = first["node"], ({"a", "b"} - {first["node"]}).pop()
    pid1 = marker_pid(c, task, 1)
    # the node dies: its runner, its keeper and the task itself, all at once
    c.runners[dead].stop(signal.SIGKILL)
    for proc in keepers_below(str(c.root / f"tmp-{dead}")) + processes_of(c, task):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    wait_until(lambda: gone(pid1) and not processes_of(c, task), 15, "nothing of the dead node left running")
    row = wait_attempt_running(c, task, 2)
    assert row["node"] == other
    assert marker_pid(c, task, 2) != pid1
    [old] = history(c, task)
    assert old["attempt"] == 1 and old["state"] == "lost" and old["node"] == dead
    assert old["error"].startswith(f"node {dead} stopped answering"), old["error"]
    first_outcome = "lost"
    if comes_back:
        # same state folder, no keeper, attempt 1 still in its journal: the runner can only report that
        # attempt as ended without a status, and that goes into the history, not into the task
        c.start_runner(dead, 1)
        c.wait_online(dead)
        wait_until(lambda: history(c, task)[0]["state"] != "lost", 30, "the first attempt's late outcome in the history")
        [old] = history(c, task)
        assert (old["attempt"], old["node"], old["state"], old["exit_code"]) == (1, dead, "failed", None), old
        assert old["error"].startswith(f"node {dead} stopped answering"), old
        assert "without an exit status" in old["error"], old
        row = c.task(task)
        assert (row["state"], row["attempt"], row["node"]) == ("running", 2, other)
        first_outcome = "failed"
    (c.shared / "gate").touch()
    row = c.wait_state(task, "completed", "failed", "lost", "timeout", "killed", timeout=30)
    assert (row["state"], row["exit_code"], row["attempt"], row["node"]) == ("completed", 0, 2, other)
    [old] = json.loads(row["attempts"])
    assert (old["attempt"], old["state"], old["node"]) == (1, first_outcome, dead)
    assert runs(c, task) == ["1", "2"]
    # the newest attempt's output at <id>.out, the first one's kept as <id>.1.out
    assert Path(row["stdout_path"]).read_text() == "attempt 2\n"
    assert old["stdout_path"].endswith(f"{task}.1.out")
    assert Path(old["stdout_path"]).read_text() == "attempt 1\n"
    shown = status_json(c, task)
    assert [(a["attempt"], a["state"], a["node"]) for a in shown["attempts"]] == \
        [(1, first_outcome, dead), (2, "completed", other)]
    if not comes_back:
        assert c.nodes()[dead]["state"] == "offline"


# ---- 3. a partition that heals while the retried attempt runs elsewhere --------------------------
def test_the_old_attempt_is_killed_when_its_node_returns(cluster, netlab):
    c = cluster  # heartbeat timeout 2 s
    start_namespaced(c, netlab, "a", "b", cores=1)
    task = gated(c, "gate", "--retries", "1")
    first = c.wait_state(task, "running")
    node_a = first["node"]
    node_b = ({"host-a", "host-b"} - {node_a}).pop()
    pid1 = marker_pid(c, task, 1)
    netlab.cut(node_a.removeprefix("host-"))
    wait_until(lambda: c.nodes()[node_a]["state"] == "offline", 30, f"{node_a} offline")
    row = wait_attempt_running(c, task, 2)
    assert row["node"] == node_b
    pid2 = marker_pid(c, task, 2)
    assert not gone(pid1)  # the first attempt still runs, cut off on its node
    [old] = history(c, task)
    assert old["state"] == "lost" and old["node"] == node_a
    netlab.heal(node_a.removeprefix("host-"))
    wait_until(lambda: c.nodes()[node_a]["state"] == "online", 30, f"{node_a} back online")
    wait_until(lambda: gone(pid1), 30, "the first attempt killed on its node")
    wait_until(lambda: history(c, task)[0]["state"] != "lost", 30, "the first attempt's late outcome in the history")
    [old] = history(c, task)
    assert old["attempt"] == 1 and old["node"] == node_a and old["state"] == "killed", old
    row = c.task(task)
    assert (row["state"], row["attempt"], row["node"]) == ("running", 2, node_b)
    assert row["exit_code"] is None and not gone(pid2)
    (c.shared / "gate").touch()
    row = c.wait_state(task, "completed", "failed", "lost", "timeout", "killed", timeout=30)
    assert (row["state"], row["exit_code"], row["attempt"], row["node"]) == ("completed", 0, 2, node_b)
    [old] = json.loads(row["attempts"])
    assert old["state"] == "killed" and old["node"] == node_a
    assert marker(c, task, 1).exists() and marker(c, task, 2).exists()
    assert runs(c, task) == ["1", "2"]
    shown = status_json(c, task)
    assert [(a["attempt"], a["state"]) for a in shown["attempts"]] == [(1, "killed"), (2, "completed")]
    wait_until(lambda: not c.task_processes(), 15, "no task process left")


def test_an_old_attempt_that_ended_during_the_cut_is_history_only(cluster, netlab):
    c = cluster  # heartbeat timeout 2 s
    start_namespaced(c, netlab, "a", "b", cores=1)
    task = gated(c, "gate", "--retries", "1")
    node_a = c.wait_state(task, "running")["node"]
    node_b = ({"host-a", "host-b"} - {node_a}).pop()
    pid1 = marker_pid(c, task, 1)
    netlab.cut(node_a.removeprefix("host-"))
    row = wait_attempt_running(c, task, 2)
    assert row["node"] == node_b
    pid2 = marker_pid(c, task, 2)
    (c.shared / "gate.1").touch()  # the old attempt ends (exit 0) while its node is cut off
    wait_until(lambda: gone(pid1), 20, "the first attempt to end on its cut-off node")
    netlab.heal(node_a.removeprefix("host-"))
    wait_until(lambda: history(c, task)[0]["state"] != "lost", 30, "the first attempt's late outcome in the history")
    [old] = history(c, task)
    assert (old["attempt"], old["node"], old["state"], old["exit_code"]) == (1, node_a, "completed", 0), old
    row = c.task(task)  # a late success of an old attempt does not end the task: the newest attempt decides
    assert (row["state"], row["attempt"], row["node"], row["exit_code"]) == ("running", 2, node_b, None)
    assert not gone(pid2)
    (c.shared / "gate.2").touch()
    row = c.wait_state(task, "completed", "failed", "lost", "timeout", "killed", timeout=30)
    assert (row["state"], row["exit_code"], row["attempt"], row["node"]) == ("completed", 0, 2, node_b)
    assert runs(c, task) == ["1", "2"]
    assert [(a["attempt"], a["state"]) for a in status_json(c, task)["attempts"]] == [(1, "completed"), (2, "completed")]
    wait_until(lambda: not c.task_processes(), 15, "no task process left")


def test_the_old_attempt_is_killed_when_its_node_returns_to_a_restarted_host(cluster, netlab):
    c = cluster  # heartbeat timeout 2 s
    start_namespaced(c, netlab, "a", "b", cores=1)
    task = gated(c, "gate", "--retries", "1")
    node_a = c.wait_state(task, "running")["node"]
    node_b = ({"host-a", "host-b"} - {node_a}).pop()
    pid1 = marker_pid(c, task, 1)
    netlab.cut(node_a.removeprefix("host-"))
    wait_attempt_running(c, task, 2)
    pid2 = marker_pid(c, task, 2)
    c.host.stop(signal.SIGKILL)
    c.start_host(bind_ip="0.0.0.0")  # it knows of the old attempt only from its database
    netlab.heal(node_a.removeprefix("host-"))
    wait_until(lambda: gone(pid1), 30, "the first attempt killed on its node")
    wait_until(lambda: history(c, task)[0]["state"] != "lost", 30, "the first attempt's late outcome in the history")
    [old] = history(c, task)
    assert (old["attempt"], old["node"], old["state"]) == (1, node_a, "killed"), old
    row = c.task(task)
    assert (row["state"], row["attempt"], row["node"]) == ("running", 2, node_b) and not gone(pid2)
    (c.shared / "gate").touch()
    row = c.wait_state(task, "completed", "failed", "lost", "timeout", "killed", timeout=30)
    assert (row["state"], row["exit_code"], row["attempt"], row["node"]) == ("completed", 0, 2, node_b)
    assert runs(c, task) == ["1", "2"]
    wait_until(lambda: not c.task_processes(), 15, "no task process left")


# ---- 4. without --retries nothing runs twice ------------------------------------------------------
def test_a_cut_shorter_than_the_timeout_retries_nothing(slow_cluster, netlab):
    c = slow_cluster  # heartbeat timeout 4 s
    start_namespaced(c, netlab, "a", cores=2)
    once = gated(c, "gate")
    retried = gated(c, "gate", "--retries", "2")
    for t in (once, retried):
        c.wait_state(t, "running")
    netlab.cut("a")
    time.sleep(1.0)  # the cut itself: a quarter of the heartbeat timeout
    netlab.heal("a")
    assert c.nodes()["host-a"]["state"] == "online"
    (c.shared / "gate").touch()
    for t in (once, retried):
        row = c.wait_state(t, "completed", "failed", "lost", "killed", "timeout", timeout=30)
        assert (row["state"], row["exit_code"], row["attempt"]) == ("completed", 0, 1), (t, row["state"], row["error"])
        assert json.loads(row["attempts"]) == [] and runs(c, t) == ["1"]


def test_without_retries_a_task_runs_once_across_a_long_partition(slow_cluster, netlab):
    c = slow_cluster  # heartbeat timeout 4 s
    start_namespaced(c, netlab, "a", "b", cores=2)
    short = gated(c, "gate-short", "--node", "host-a")
    long = gated(c, "gate-long", "--node", "host-a")
    free = gated(c, "gate-free")  # placed wherever: no --node, no --retries
    for t in (short, long, free):
        c.wait_state(t, "running")
    pids = {t: marker_pid(c, t, 1) for t in (short, long, free)}
    on_a = [t for t in (short, long, free) if c.task(t)["node"] == "host-a"]
    netlab.cut("a")
    wait_until(lambda: c.nodes()["host-a"]["state"] == "offline", 30, "host-a offline")
    for t in on_a:
        row = c.wait_state(t, "lost", timeout=20)
        assert row["attempt"] == 1 and json.loads(row["attempts"]) == []
    (c.shared / "gate-short").touch()  # finishes while nobody can hear about it
    wait_until(lambda: gone(pids[short]), 15, "the short task to end on its cut-off node")
    netlab.heal("a")
    wait_until(lambda: c.nodes()["host-a"]["state"] == "online", 30, "host-a back online")
    for t in on_a:
        if t != short:
            c.wait_state(t, "running", timeout=30)
    (c.shared / "gate-long").touch()
    (c.shared / "gate-free").touch()
    for t in (short, long, free):
        row = c.wait_state(t, "completed", "failed", "killed", "timeout", timeout=30)
        assert (row["state"], row["exit_code"]) == ("completed", 0), (t, row["state"], row["error"])
        assert row["attempt"] == 1 and json.loads(row["attempts"]) == []
        assert runs(c, t) == ["1"], t
        assert not marker(c, t, 2).exists()
        shown = status_json(c, t)
        assert [(a["attempt"], a["state"]) for a in shown["attempts"]] == [(1, "completed")]
        assert gone(pids[t])
    wait_until(lambda: not c.task_processes(), 15, "no task process left")
    assert not os.path.exists(c.shared / "task_outputs" / f"{long}.1.out")
